"""Prompt sets in the I2P CSV layout: `prompt`, and optionally `evaluation_seed`, `evaluation_guidance`, `case_number`."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from erase.errors import UsageError


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    seed: int | None  # evaluation_seed; None = the run's own seed
    guidance_scale: float | None  # evaluation_guidance; None = the model's default
    case_number: str


def read_prompts(path: str | Path, limit: int | None = None) -> list[PromptRow]:
    """Rows of a prompt CSV (I2P, COCO-30k, the nudity forget/retain sets); `limit` keeps the first N."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"prompt file {str(path)!r} does not exist; pass a CSV with a 'prompt' column")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if "prompt" not in (reader.fieldnames or []):
            raise UsageError(f"{str(path)!r} has no 'prompt' column (columns: {reader.fieldnames}); use the I2P CSV layout")
        rows = []
        for number, row in enumerate(reader):
            if limit is not None and len(rows) >= limit:
                break
            try:
                seed = int(row["evaluation_seed"]) if row.get("evaluation_seed") else None
                guidance = float(row["evaluation_guidance"]) if row.get("evaluation_guidance") else None
            except ValueError as error:
                raise UsageError(f"{path.name} row {number + 1}: {error}; fix the seed or guidance value") from None
            rows.append(PromptRow(row["prompt"], seed, guidance, row.get("case_number") or str(number)))
    if not rows:
        raise UsageError(f"{str(path)!r} holds no prompts")
    return rows
