"""Score a class-conditional model from its own samples: FA, RA per class, FID on the remaining classes.

Shared by `erase demo` and `erase benchmark`: every model is sampled with the same seeds (image k of class c
uses seed SEED + k), so rows of a comparison differ only by the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from erase.data import load_dataset
from erase.eval.classifier import forgetting_metrics, predict_probabilities
from erase.eval.fid import FID, ClassifierFeatures, fid_against, module_digest, real_statistics_path
from erase.sampling import class_jobs, generate


@dataclass
class ClassSamples:
    images: torch.Tensor  # (N, C, H, W) in [0, 1], class-major: per_class images of class 0, then class 1, ...
    conditions: list[int]
    per_class: int
    seconds: float

    def remaining(self, forget_classes: Sequence[int]) -> torch.Tensor:
        keep = ~torch.isin(torch.tensor(self.conditions), torch.tensor(list(forget_classes)))
        return self.images[keep]

    def column(self, index: int = 0) -> torch.Tensor:
        """Image `index` (seed SEED + index) of every class, in class order: one grid row."""
        return self.images[index :: self.per_class]


def sample_classes(adapter, per_class: int, seed: int = 0, num_inference_steps: int = 50,
                   description: str = "sample", guidance_scale: float | None = None) -> ClassSamples:
    """`per_class` images of every class (guidance None = the model's stored scale)."""
    import time

    classes = list(range(adapter.num_classes))
    jobs = class_jobs(classes, range(seed, seed + per_class), adapter.class_names, guidance_scale)
    started = time.perf_counter()
    images = generate(adapter, jobs, num_inference_steps, description=description)
    return ClassSamples(images, [job.condition for job in jobs], per_class, time.perf_counter() - started)


@dataclass
class RealReference:
    """Real images of the remaining classes for FID, loaded only when their cached statistics are missing."""

    images: Callable[[], torch.Tensor]
    cache_file: Path | None


def real_reference(classifier, dataset: str, resolution: int, forget_classes: Sequence[int], cache_dir: Path) -> RealReference:
    """The dataset's remaining classes; the cache key is the one `erase score --fid-ref` uses, so both share it."""
    classes = [c for c in range(10) if c not in set(forget_classes)]

    def images():
        data = load_dataset(dataset, resolution)
        return ((data.images[torch.isin(data.labels, torch.tensor(classes))] + 1) / 2).clamp(0, 1)

    extra = f"{classes}|{module_digest(ClassifierFeatures(classifier))}"
    return RealReference(images, real_statistics_path(cache_dir, dataset, resolution, "classifier", extra))


def class_scores(samples: ClassSamples, forget_classes: Sequence[int], classifier, real: RealReference | None = None,
                 reference: ClassSamples | None = None) -> dict:
    """FA, RA per class and mean; FID (classifier features) of the remaining classes vs real data and vs `reference`."""
    scores = forgetting_metrics(predict_probabilities(classifier, samples.images), samples.conditions, forget_classes)
    mine = samples.remaining(forget_classes)
    if real is not None:
        fid = FID(ClassifierFeatures(classifier), "classifier")
        scores["fid_real"] = fid_against(fid, real.images, mine, real.cache_file)
    if reference is not None:
        fid = FID(ClassifierFeatures(classifier), "classifier")
        fid.update(reference.remaining(forget_classes), real=True)
        fid.update(mine, real=False)
        scores["fid_reference"] = fid.compute()
    return scores
