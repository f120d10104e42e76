"""Labelled comparison grids: rows = models, columns = conditions, identical seeds per column."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from erase.sampling import generate


def image_grid(
    rows: dict[str, torch.Tensor], column_labels: Sequence[str], cell: int = 48, padding: int = 2
) -> Image.Image:
    """rows: name -> images (N, C, H, W) in [0, 1], N = len(column_labels). Returns an RGB picture with labels."""
    font = ImageFont.load_default()
    label_width = max(8 + int(font.getlength(name)) for name in rows)
    header = 16
    columns = len(column_labels)
    width = label_width + columns * (cell + padding) + padding
    height = header + len(rows) * (cell + padding) + padding
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(column_labels):
        x = label_width + padding + c * (cell + padding)
        draw.text((x + (cell - font.getlength(label)) / 2, 2), label, fill="black", font=font)
    for r, (name, images) in enumerate(rows.items()):
        if images.shape[0] != columns:
            raise ValueError(f"row {name!r} has {images.shape[0]} images for {columns} columns")
        y = header + padding + r * (cell + padding)
        draw.text((4, y + cell / 2 - 6), name, fill="black", font=font)
        pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        for c in range(columns):
            array = pixels[c].permute(1, 2, 0).numpy()
            tile = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).convert("RGB")
            canvas.paste(tile.resize((cell, cell), Image.Resampling.NEAREST), (label_width + padding + c * (cell + padding), y))
    return canvas


def grid_rows(adapters: dict, make_jobs: Callable[[int], list], seeds: Sequence[int],
              num_inference_steps: int | None = None, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Rows "model sSEED", models adjacent for each seed; `make_jobs(seed)` gives one job per column."""
    rows = {}
    for seed in seeds:
        jobs = make_jobs(seed)
        for name, adapter in adapters.items():
            rows[f"{name} s{seed}"] = generate(adapter, jobs, num_inference_steps, batch_size, f"{name} s{seed}")
    return rows
