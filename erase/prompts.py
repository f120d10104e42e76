"""Prompt sets in the I2P CSV layout: `prompt`, and optionally `evaluation_seed`, `evaluation_guidance`, `case_number`."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from erase.errors import DataError


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
        raise DataError(f"prompt file {str(path)!r} does not exist; pass a CSV with a 'prompt' column")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = _read_rows(path, csv.DictReader(handle), limit)
    except UnicodeDecodeError:
        raise DataError(f"prompt file {str(path)!r} is not UTF-8 text; save it as a UTF-8 CSV") from None
    except csv.Error as error:
        raise DataError(f"prompt file {str(path)!r} is not a readable CSV ({error}); fix or re-export it") from None
    if not rows:
        raise DataError(f"prompt file {str(path)!r} holds no prompts; add rows under its 'prompt' header")
    return rows


def _read_rows(path: Path, reader: csv.DictReader, limit: int | None) -> list[PromptRow]:
    if reader.fieldnames is None:
        raise DataError(f"prompt file {str(path)!r} is empty; give it a 'prompt' header and one prompt per row")
    if "prompt" not in reader.fieldnames:
        raise DataError(f"prompt file {str(path)!r} has no 'prompt' column (columns: {', '.join(reader.fieldnames)}); "
                         "name the prompt column 'prompt' (the I2P CSV layout)")
    rows = []
    for number, row in enumerate(reader):
        if limit is not None and len(rows) >= limit:
            break
        where = f"prompt file {str(path)!r} row {number + 1}"
        try:
            seed = int(row["evaluation_seed"]) if row.get("evaluation_seed") else None
            guidance = float(row["evaluation_guidance"]) if row.get("evaluation_guidance") else None
        except ValueError as error:
            raise DataError(f"{where}: {error}; fix the evaluation_seed or evaluation_guidance value") from None
        rows.append(PromptRow(row["prompt"] or "", seed, guidance, row.get("case_number") or str(number)))
    if rows and not any(row.prompt.strip() for row in rows):  # one blank row is a valid prompt (I2P has one)
        raise DataError(f"prompt file {str(path)!r}: every prompt is empty; write the prompts in its 'prompt' column")
    return rows
