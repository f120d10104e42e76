"""An image classifier behind the adapter interface, so the erasure methods run on it unchanged.

Unlearning was first studied on classifiers (SFR-on forgets a random 10% of a training set from a ResNet; Nabla-tau
forgets random subsets and whole classes). Here the per-sample loss every method ascends or descends is the
cross-entropy of the sample's label, and a method's "pseudo target" (RL, SalUn, SFR-on's pseudo objective) is the
cross-entropy of another label. There is no noise, timestep or guidance: `erase.objectives` asks the adapter for
its losses (`generative` is False) instead of computing a denoising loss.

Folder layout: `model_index.json` (this package's facts under `_erase`: backbone "classifier", class names, the data
split the model was trained on) and `classifier/` (`config.json`, `model.safetensors`, written by the
huggingface_hub mixin). `erase train-classifier` writes it; `SmallCNN.from_pretrained(folder / "classifier")` loads
the network alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from erase.errors import ModelError, option
from erase.pipelines.base import ERASE_KEY

COMPONENT = "classifier"
METHODS = ("sfron", "joint", "nabla_tau", "ga", "rl", "salun")  # ESD and SA need a generative model


class SmallCNN(nn.Module, PyTorchModelHubMixin):
    """Four 3x3 convolutions (two 2x2 poolings), one hidden linear layer: the embedded default for grey digits.

    Input: images in [-1, 1], (N, channels, resolution, resolution); output: logits (N, num_classes).
    """

    def __init__(self, resolution: int = 16, channels: int = 1, num_classes: int = 10, width: int = 32,
                 hidden: int = 128):
        super().__init__()
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * width * (resolution // 4) ** 2, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def no_generation(*args, **kwargs):
    raise ModelError("this model is an image classifier: it does not generate images; sample from a diffusion "
                     "model, or score the classifier with `erase benchmark-classifier`")


class ClassifierAdapter:
    """A classifier (`self.classifier`); a condition is a LongTensor of labels. The methods see the adapter interface,
    in which the trained network is `denoiser` (the word of every other adapter): here it is the classifier."""

    backbone = "classifier"
    conditional = True  # the label enters the loss
    takes_prompts = False
    generative = False  # no noise, sampling or guidance: objectives ask for `losses`
    has_null_condition = False  # no unconditional branch: remain label dropout does not apply
    preset = None  # erase.methods presets under "classifier"
    pipeline_class = None  # not a diffusers pipeline: erase's own folder layout
    num_train_timesteps = 1
    methods = METHODS

    def __init__(self, model: nn.Module, info: dict | None = None):
        self.classifier = model
        self.info = dict(info or {})
        self.info["backbone"] = self.backbone
        self.info.setdefault("class_names", [str(i) for i in range(model.num_classes)])

    @property
    def denoiser(self) -> nn.Module:
        """The adapter interface's name for the trained network: the classifier."""
        return self.classifier

    @denoiser.setter
    def denoiser(self, module: nn.Module) -> None:  # the engine swaps in a frozen copy for a moment
        self.classifier = module

    @classmethod
    def create(cls, resolution: int = 16, channels: int = 1, num_classes: int = 10, **info) -> "ClassifierAdapter":
        return cls(SmallCNN(resolution=resolution, channels=channels, num_classes=num_classes), info)

    @property
    def device(self) -> torch.device:
        return next(self.classifier.parameters()).device

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.classifier.channels, self.classifier.resolution, self.classifier.resolution)

    latent_shape = image_shape

    def to(self, device) -> "ClassifierAdapter":
        self.classifier.to(device)
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images  # the network takes [-1, 1] images as the datasets hold them

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images)

    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy of `labels`, (B,), in float32."""
        return F.cross_entropy(self.classifier(images).float(), labels, reduction="none")

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Logits of `images` in eval mode, in batches, on the CPU (N, num_classes)."""
        was_training = self.classifier.training
        self.classifier.eval()
        try:
            return torch.cat([self.classifier(images[i : i + batch_size].to(self.device)).float().cpu()
                              for i in range(0, len(images), batch_size)])
        finally:
            self.classifier.train(was_training)

    def accuracy(self, dataset) -> float:
        """Share of `dataset` (images in [-1, 1], labels) classified correctly."""
        return float((self.predict(dataset.images).argmax(-1) == dataset.labels).float().mean())

    def draw(self, x0: torch.Tensor, antithetic: bool = False, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """No noise enters a classifier's loss; a batch still draws (noise, timestep 0) from the same random stream
        as a diffusion model's, so the Fisher's and saliency's batch order and seeds are the same for both kinds."""
        from erase.pipelines.targets import gaussian_like

        noise = gaussian_like(x0, generator)
        where = x0.device if generator is None else "cpu"
        return noise, torch.randint(0, 1, (x0.shape[0],), device=where, generator=generator).to(x0.device)

    def check_class_ids(self, ids, allow_null: bool = False) -> None:
        bad = sorted({int(c) for c in ids if not 0 <= int(c) < self.num_classes})
        if bad:
            raise ModelError(f"class ids {bad} do not exist; this classifier has classes 0-{self.num_classes - 1}")

    def null_condition(self, batch_size: int):
        raise ModelError(f"a classifier has no null label; leave {option('--remain-label-dropout')} at 0")

    model_output = guided_output = sample = sample_latents = staticmethod(no_generation)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.classifier.save_pretrained(directory / COMPONENT)
        (directory / COMPONENT / "README.md").unlink(missing_ok=True)  # the mixin's Hub model card
        index = {"_class_name": "ErasableImageClassifier", COMPONENT: ["erase.pipelines.classifier", "SmallCNN"],
                 ERASE_KEY: self.info}
        (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> "ClassifierAdapter":
        directory = Path(directory)
        info = json.loads((directory / "model_index.json").read_text()).get(ERASE_KEY) or {}
        return cls(SmallCNN.from_pretrained(directory / COMPONENT, **kwargs), info)
