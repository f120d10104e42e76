"""Image tensors in and out of evaluation: one conversion, checked, and the folder layout `erase sample` writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from erase.errors import DataError, option

INDEX = "index.json"


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]. Floats below 0 or above 1 are refused, not clamped.

    The official SFR-on evaluation cast [-1, 1] floats straight to uint8, which makes FID meaningless;
    such input stops here with the conversion to apply.
    """
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise DataError(f"images must be uint8 or floats in [0, 1], got {images.dtype}")
    low, high = float(images.min()), float(images.max())
    if low < 0.0:
        raise DataError(
            f"float images must lie in [0, 1] but the minimum is {low:.3f}: they look like [-1, 1] model outputs; "
            "pass (images + 1) / 2"
        )
    if high > 1.0:
        raise DataError(f"float images must lie in [0, 1] but the maximum is {high:.3f}; pass uint8 or divide by 255")
    return images.float()


def to_uint8_array(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float [0, 1] -> (H, W) or (H, W, C) uint8 for PIL."""
    array = (to_unit_float(image) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def write_images(folder: Path, images: torch.Tensor, records: list[dict], header: dict) -> None:
    """PNG per image plus `index.json` = header + one record per image (its file, condition and seed)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for image, record in zip(images, records):
        Image.fromarray(to_uint8_array(image)).save(folder / record["file"])
    (folder / INDEX).write_text(json.dumps({**header, "images": records}, indent=2) + "\n")


def read_image_folder(folder: str | Path, flag: str = "--images") -> tuple[torch.Tensor, list[dict]]:
    """uint8 (N, C, H, W) images and their records: from `index.json` when present, else every PNG/JPEG, sorted.
    An image that does not decode is a DataError naming it and `flag`, the option that named the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {str(folder)!r} does not exist; pass a folder written by `erase sample`")
    index = folder / INDEX
    if index.is_file():
        records = json.loads(index.read_text())["images"]
    else:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        records = [{"file": str(p.relative_to(folder))} for p in files]
    if not records:
        raise DataError(f"{str(folder)!r} holds no images")
    arrays = []
    for record in records:
        try:
            with Image.open(folder / record["file"]) as image:
                arrays.append(np.asarray(image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode)))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"{option(flag)} {str(folder)!r}: {record['file']} cannot be read as an image ({error}); "
                            "replace or remove it") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"images in {str(folder)!r} differ in size or channels ({sorted(shapes)}); score one set at a time")
    stacked = torch.from_numpy(np.stack(arrays))
    stacked = stacked.unsqueeze(1) if stacked.dim() == 3 else stacked.permute(0, 3, 1, 2)
    return stacked, records
