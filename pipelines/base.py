"""The one interface every erasure method sees: a backbone adapter.

Methods in `erase/` call only what is declared here, so a method written once runs on every backbone
(DDPM, class-conditional CFG UNet, DiT, Stable Diffusion). The calling convention follows k-diffusion's
single `model(x, sigma, **extra)` idea: `predict_noise(x_t, timesteps, condition)` for every model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

# What a condition is depends on the backbone: a LongTensor of class ids for class-conditional models,
# None for unconditional ones, prompt embeddings for text-to-image models. Methods pass it through untouched.
Condition = Any


@runtime_checkable
class DiffusionAdapter(Protocol):
    """A trainable denoiser plus the fixed parts (scheduler, encoder) needed to train and sample it."""

    denoiser: torch.nn.Module  # the module whose parameters erasure methods train
    num_train_timesteps: int
    conditional: bool  # False for unconditional models: conditions are ignored, no guidance

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (N, C, H, W) -> the space the denoiser works in (pixels or latents)."""

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""

    def predict_noise(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: Condition) -> torch.Tensor:
        """eps_theta(x_t, t, c), same shape as x_t."""

    def null_condition(self, batch_size: int) -> Condition:
        """The unconditional ("null") condition used for classifier-free guidance."""

    def sample(
        self,
        conditions: Sequence | torch.Tensor,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One image per condition, floats in [0, 1], (N, C, H, W). Guidance None = the model's own scale."""

    def save_pretrained(self, directory: str | Path) -> None:
        """Write a folder that plain diffusers loads."""

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> "DiffusionAdapter":
        """Load a folder written by `save_pretrained` (or a public checkpoint of the same layout)."""
