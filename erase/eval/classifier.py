"""Forgetting accuracy (FA) and remaining accuracy (RA) of generated images, judged by a classifier.

FA = share of samples generated for a forgotten class that the classifier assigns to that class (lower is
better; a model retrained without the class scores ~0). RA = the same share for each remaining class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from erase.errors import UsageError
from erase.images import to_unit_float

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED = {"digits": ASSETS / "digit-classifier",
           "styles": ASSETS / "style-classifier",  # the 8 styles of erase.styled, 24 px RGB
           "styled-digits": ASSETS / "styled-digit-classifier"}  # the digit of a styled rendering, 24 px RGB


class DigitClassifier(nn.Module, PyTorchModelHubMixin):
    """A small CNN; input floats in [0, 1], (N, C, H, W), resized to `resolution`. `in_channels` 1 (grey digits:
    RGB input is averaged to grey) or 3 (the styled digits' judges read colour)."""

    def __init__(self, resolution: int = 16, num_classes: int = 10, width: int = 32, feature_dim: int = 128,
                 in_channels: int = 1):
        super().__init__()
        self.resolution = resolution
        self.in_channels = in_channels
        self.num_features = feature_dim  # what torchmetrics' FID reads off a custom extractor
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (resolution // 4) ** 2, feature_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(images)
        if x.shape[1] == 3 and self.in_channels == 1:
            x = x.mean(1, keepdim=True)
        elif x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False)
        return (x - 0.5) / 0.5

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, (N, feature_dim): the usual FID features for MNIST-like data."""
        return self.body(self.prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(images)))


class TransformersClassifier(nn.Module):
    """A local `transformers` image-classification folder behind the same (images in [0, 1]) -> logits call."""

    def __init__(self, folder: str | Path):
        super().__init__()
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
        try:
            self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError):
            self.processor = None  # no preprocessor_config.json: feed images as they are

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(images)
        if x.shape[1] == 1 and getattr(self.model.config, "num_channels", 3) == 3:
            x = x.expand(-1, 3, -1, -1)  # grey digits into an RGB model
        if self.processor is not None:
            x = self.processor(images=x, return_tensors="pt", do_rescale=False)["pixel_values"].to(x.device)
        return self.model(pixel_values=x).logits


def load_classifier(spec: str | Path | nn.Module) -> nn.Module:
    """'digits' (the shipped digit classifier), a classifier folder (ours or transformers'), or a module."""
    if isinstance(spec, nn.Module):
        return spec.eval()
    folder = SHIPPED.get(str(spec), Path(spec))
    if not Path(folder).is_dir():
        raise UsageError(f"classifier {str(spec)!r} not found; pass {', '.join(map(repr, SHIPPED))}, a classifier folder, or a transformers model folder")
    config = json.loads((Path(folder) / "config.json").read_text()) if (Path(folder) / "config.json").is_file() else {}
    if "architectures" in config or "model_type" in config:
        return TransformersClassifier(folder).eval()
    return DigitClassifier.from_pretrained(folder).eval()


@torch.no_grad()
def predict_probabilities(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Softmax class probabilities, (N, num_classes), computed in batches."""
    device = next(classifier.parameters()).device
    parts = [classifier(images[i : i + batch_size].to(device)).float().softmax(-1).cpu()
             for i in range(0, len(images), batch_size)]
    return torch.cat(parts)


def forgetting_metrics(probabilities: torch.Tensor, conditions: Sequence[int], forget_classes: Sequence[int]) -> dict:
    """FA, RA per class and mean, and for forget samples the mean probability of their class and mean entropy."""
    conditions = torch.as_tensor(list(conditions))
    predicted = probabilities.argmax(-1)
    correct = predicted == conditions
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1)
    per_class = {int(c): float(correct[conditions == c].float().mean()) for c in conditions.unique()}
    forget = torch.isin(conditions, torch.as_tensor(list(forget_classes)))
    remain = {c: acc for c, acc in per_class.items() if c not in set(forget_classes)}
    own_probability = probabilities[torch.arange(len(conditions)), conditions]
    return {
        "forget_classes": list(forget_classes),
        "forgetting_accuracy": float(correct[forget].float().mean()) if forget.any() else None,
        "forget_class_probability": float(own_probability[forget].mean()) if forget.any() else None,
        "forget_entropy": float(entropy[forget].mean()) if forget.any() else None,
        "remaining_accuracy": remain,
        "remaining_accuracy_mean": sum(remain.values()) / len(remain) if remain else None,
        "remain_entropy": float(entropy[~forget].mean()) if (~forget).any() else None,
        "samples": {"forget": int(forget.sum()), "remain": int((~forget).sum())},
    }
