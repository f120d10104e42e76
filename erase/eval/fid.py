"""FID on torchmetrics' FrechetInceptionDistance, with a pluggable feature extractor and cached real statistics.

Extractors: `inception` (clean-fid's Inception-v3 TorchScript weights), `classifier` (penultimate features of the
digit classifier: the usual choice for MNIST-like data), or any module mapping float images in [0, 1] to (N, D)
features with a `num_features` attribute.

Inception needs no torchvision. clean-fid's package metadata lists torchvision, but the two modules used here,
`cleanfid.inception_torchscript` (InceptionV3W: `torch.jit.load` of the weights file) and `cleanfid.resize`
(the 'clean' PIL bicubic resize to 299 px), import only torch, numpy, PIL and `requests` (through
`cleanfid.downloads_helper`), and `cleanfid/__init__.py` is empty (checked on clean-fid 0.1.35). Install it without
its declared dependencies, so pip does not pull torchvision (and a torch build to match it) in:

    pip install --no-deps clean-fid==0.1.35
    pip install requests   # already there: diffusers depends on it

and put the weights file, `inception-2015-12-05.pt` (the StyleGAN2-ADA metrics file clean-fid downloads,
https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt, about 95 MB), in
`ERASE_INCEPTION_DIR` or ~/.cache/erase. Nothing is downloaded at run time. This project's test machine cannot
fetch that file, so tests/test_scoring_text.py runs `erase score --fid-features inception` end to end with a tiny
TorchScript stand-in of the same interface (a scripted module with a `layers` submodule mapping (N, 3, 299, 299)
floats in [-1, 1] to N x 2048 values); the real network's features were not run here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from erase.errors import UsageError, option
from erase.images import to_unit_float

INCEPTION_FILE = "inception-2015-12-05.pt"
REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


class ClassifierFeatures(nn.Module):
    """Penultimate features of a classifier that has a `features(images)` method."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        if not hasattr(classifier, "features"):
            raise UsageError(f"this classifier has no features() method; use {option('--fid-features')} inception or the digit classifier")
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


class InceptionFeatures(nn.Module):
    """clean-fid's Inception-v3 pool features (2048-d) with its 'clean' PIL resize to 299 px."""

    num_features = 2048

    def __init__(self, weights_dir: str | Path | None = None):
        super().__init__()
        weights_dir = Path(weights_dir or os.environ.get("ERASE_INCEPTION_DIR", Path.home() / ".cache" / "erase"))
        try:
            from cleanfid.inception_torchscript import InceptionV3W
            from cleanfid.resize import build_resizer
        except Exception as error:  # ImportError; or, with clean-fid's full dependencies, a torchvision that fails
            raise UsageError(
                f"Inception features need clean-fid ({type(error).__name__}: {error}); install it without "
                "torchvision, `pip install --no-deps clean-fid==0.1.35` (its one other need, requests, comes with "
                f"diffusers), or use {option('--fid-features')} classifier"
            ) from None
        if not (weights_dir / INCEPTION_FILE).is_file():
            raise UsageError(
                f"Inception weights not found: put {INCEPTION_FILE} (clean-fid's file) in {weights_dir} "
                "or point ERASE_INCEPTION_DIR at its folder; nothing is downloaded at run time"
            )
        self.model = InceptionV3W(str(weights_dir), download=False, resize_inside=False).eval()
        self.resize = build_resizer("clean")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images * 255).round().to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        resized = [torch.from_numpy(self.resize(p.permute(1, 2, 0).cpu().numpy())) for p in pixels]
        batch = torch.stack(resized).permute(0, 3, 1, 2).to(images.device)
        return self.model(batch)


class FID:
    """Frechet distance between real and generated image sets in the extractor's feature space."""

    def __init__(self, extractor: nn.Module, name: str):
        self.name = name
        self.metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False)

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool, batch_size: int = 500) -> None:
        """Images are uint8 [0, 255] or floats in [0, 1] (checked); converted once, here."""
        for start in range(0, len(images), batch_size):
            self.metric.update(to_unit_float(images[start : start + batch_size]), real=real)

    def compute(self) -> float:
        return float(self.metric.compute())

    @property
    def sample_counts(self) -> dict[str, int]:
        return {"real": int(self.metric.real_features_num_samples), "generated": int(self.metric.fake_features_num_samples)}

    def save_real(self, path: Path) -> None:
        save_file({name: getattr(self.metric, name).contiguous() for name in REAL_STATES}, str(path))

    def load_real(self, path: Path) -> None:
        for name, value in load_file(str(path)).items():
            setattr(self.metric, name, value)


def module_digest(module: nn.Module) -> str:
    """Short hash of a module's weights, so cached statistics follow the extractor's exact weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def real_statistics_path(cache_dir: Path, dataset: str, resolution: int, extractor: str, extra: str = "") -> Path:
    """Cache file keyed by dataset, resolution and extractor (plus e.g. the classifier's weights digest)."""
    key = hashlib.sha256(f"{dataset}|{resolution}|{extractor}|{extra}".encode()).hexdigest()[:16]
    return cache_dir / f"fid-real-{dataset}-{resolution}px-{extractor}-{key}.safetensors"


def fill_real(fid: FID, real_images_fn, cache_file: Path | None) -> None:
    """Real statistics from `cache_file` when present, else from `real_images_fn()` (and cached there)."""
    if cache_file is not None and cache_file.is_file():
        fid.load_real(cache_file)
    else:
        fid.update(real_images_fn(), real=True)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            fid.save_real(cache_file)


def fid_against(fid: FID, real_images_fn, generated: torch.Tensor, cache_file: Path | None) -> float:
    """FID of `generated` against the real statistics `fill_real` gives."""
    fill_real(fid, real_images_fn, cache_file)
    fid.update(generated, real=False)
    return fid.compute()
