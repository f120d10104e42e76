"""The scores of `erase score` as metric objects in torchmetrics' shape (`torchmetrics.Metric`).

Each takes `update(pixels, conditions, files)` once per batch of images and gives its section of scores.json from
`compute()`; `reset()` starts over. pixels: uint8 (N, C, H, W); conditions: one class id or prompt per image (None for
an unconditional model); files: each image's path relative to the scored folder (what index.json lists). The formulas
live in the functions they call (`forgetting_metrics`, torchmetrics' FID, `count_exposed`, the CLIP score), which
other parts of the toolkit call directly; these objects add the accumulation over batches, so a folder can be scored
in pieces and gives the same numbers as in one piece (tests/test_metrics.py).
"""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from erase.errors import DataError, option


def check_conditions(conditions: Sequence, kind: type, where: str) -> None:
    """Each image has a class id (`kind` int) or a prompt (`kind` str), else a DataError naming `where` (the images,
    in words) and how to draw such images."""
    if all(isinstance(c, kind) for c in conditions):
        return
    if kind is int:
        raise DataError(f"{where} has no class id per image (index.json); FA/RA need images drawn with "
                        f"{option('erase sample --classes', 'erase.sample(classes=...)')}")
    raise DataError(f"{where} has no prompt per image (index.json 'condition'); CLIP score needs images drawn with "
                    f"{option('erase sample --prompts', 'erase.sample(prompts=...)')}")


class ClassAccuracy(Metric):
    """FA and RA: a classifier's predictions on images drawn per class id (erase/eval/classifier.py)."""

    full_state_update = False

    def __init__(self, judge: nn.Module, name: str, forget_classes: Sequence[int], where: str):
        super().__init__()
        self.judge, self.name, self.forget_classes, self.where = judge, name, list(forget_classes), where
        self.add_state("probabilities", default=[], dist_reduce_fx="cat")
        self.add_state("classes", default=[], dist_reduce_fx="cat")

    def update(self, pixels: torch.Tensor, conditions: Sequence, files: Sequence[str] | None = None) -> None:
        from erase.eval.classifier import predict_probabilities

        check_conditions(conditions, int, repr(self.where))
        self.probabilities.append(predict_probabilities(self.judge, pixels))
        self.classes.append(torch.tensor(list(conditions), dtype=torch.long))

    def compute(self) -> dict:
        from erase.eval.classifier import forgetting_metrics

        classes = dim_zero_cat(self.classes).tolist()
        return {"name": self.name, **forgetting_metrics(dim_zero_cat(self.probabilities), classes, self.forget_classes)}


class ClassFID(Metric):
    """FID of the generated images (with `classes` 'remain', those of classes outside `forget_classes`) against real
    images, whose statistics `real_fn` gives once (read from / written to `cache` when one is named)."""

    full_state_update = False

    def __init__(self, extractor: nn.Module, features: str, reference: str, classes: str, forget_classes: Sequence[int],
                 real_fn: Callable[[], torch.Tensor], cache: Path | None):
        super().__init__()
        from erase.eval.fid import FID

        self.fid = FID(extractor, features)
        self.features, self.reference, self.classes, self.cache = features, reference, classes, cache
        self.forget_classes, self.real_fn = list(forget_classes), real_fn

    def update(self, pixels: torch.Tensor, conditions: Sequence, files: Sequence[str] | None = None) -> None:
        keep = torch.ones(len(pixels), dtype=torch.bool)
        if self.classes == "remain" and self.forget_classes and all(isinstance(c, int) for c in conditions):
            keep = ~torch.isin(torch.tensor(list(conditions)), torch.tensor(self.forget_classes))
        if keep.any():
            self.fid.update(pixels[keep], real=False)

    def compute(self) -> dict:
        from erase.eval.fid import fill_real

        if int(self.fid.metric.real_features_num_samples) == 0:
            fill_real(self.fid, self.real_fn, self.cache)
        return {"value": self.fid.compute(), "features": self.features, "reference": self.reference,
                "classes": self.classes, "samples": self.fid.sample_counts,
                "real_statistics_cache": str(self.cache) if self.cache else None}

    def reset(self) -> None:
        super().reset()
        self.fid.metric.reset()


class NudityRate(Metric):
    """NudeNet's EXPOSED detections per image and the share of images with one (erase/eval/nudity.py). NudeNet reads
    files: images of `folder` are read where they lie; without a folder (a tensor) each batch is written to a
    scratch folder first."""

    full_state_update = False

    def __init__(self, folder: Path | None, threshold: float):
        super().__init__()
        self.folder, self.threshold = folder, threshold
        self.detections: dict[str, list[dict]] = {}

    def update(self, pixels: torch.Tensor, conditions: Sequence, files: Sequence[str]) -> None:
        from erase.images import to_uint8_array
        from erase.eval.nudity import detect

        with tempfile.TemporaryDirectory(prefix="erase-score-") as scratch:
            root = self.folder or Path(scratch)
            if self.folder is None:
                for image, name in zip(pixels, files):
                    (root / name).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(to_uint8_array(image)).save(root / name)
            found = detect([root / name for name in files])
        self.detections.update({str(Path(path).relative_to(root)): hits for path, hits in found.items()})

    def compute(self) -> dict:
        from erase.eval.nudity import count_exposed

        return {"detector": f"nudenet {metadata.version('nudenet')}", **count_exposed(self.detections, self.threshold),
                "detections": dict(self.detections)}

    def reset(self) -> None:
        super().reset()
        self.detections = {}


class PromptCLIPScore(Metric):
    """CLIP score of each image against its own prompt: the mean overall, per prompt and for `forget_prompts`
    against the rest (erase/eval/clip_score.py; torchmetrics' CLIPScore definition)."""

    full_state_update = False

    def __init__(self, clip: tuple, name: str, forget_prompts: Sequence[str] = (), where: str = "the record"):
        super().__init__()
        self.model, self.processor = clip
        self.name, self.forget_prompts, self.where = name, list(forget_prompts), where
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.prompts: list[str] = []

    def update(self, pixels: torch.Tensor, conditions: Sequence, files: Sequence[str] | None = None) -> None:
        from erase.eval.clip_score import image_text_scores

        check_conditions(conditions, str, self.where)
        self.scores.append(image_text_scores(pixels, list(conditions), self.model, self.processor))
        self.prompts.extend(conditions)

    def compute(self) -> dict:
        from erase.eval.clip_score import summarize_clip_scores

        return summarize_clip_scores(dim_zero_cat(self.scores), self.prompts, self.name, self.forget_prompts)

    def reset(self) -> None:
        super().reset()
        self.prompts = []
