"""Unconditional DDPM: diffusers `UNet2DModel` + `DDPMScheduler`, the layout of public DDPM checkpoints.

Folder layout (what `DDPMPipeline.from_pretrained` reads): `model_index.json`, `unet/`, `scheduler/`, plus
relative links `config.json` and `diffusion_pytorch_model.safetensors` to the UNet's files, so that
`UNet2DModel.from_pretrained(folder)` works without `subfolder="unet"` and without a second copy of the weights.
This package's own facts about the model (backbone, class names, guidance) sit under the private key
`_erase` of `model_index.json`, which diffusers ignores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from erase.errors import UsageError

ERASE_KEY = "_erase"


def read_model_index(directory: str | Path) -> dict:
    """model_index.json of a diffusers folder, with a clear error when the folder is not one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"model folder {str(directory)!r} does not exist; pass a diffusers model folder to --model")
    index = directory / "model_index.json"
    if not index.is_file():
        raise UsageError(
            f"{str(directory)!r} is not a diffusers pipeline folder (no model_index.json); "
            "pass a folder written by `erase train` or `save_pretrained`"
        )
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{index} is not valid JSON ({error}); the model folder is damaged") from error


def tiny_unet_config(resolution: int, channels: Sequence[int] = (32, 64), in_channels: int = 1, **extra) -> dict:
    """A small attention-free UNet2DModel config, sized for CPU (tests, the MNIST demo)."""
    return dict(
        sample_size=resolution,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        norm_num_groups=min(8, min(channels)),
        **extra,
    )


class DDPMAdapter:
    """Unconditional UNet2DModel; conditions are ignored and guidance does not apply."""

    backbone = "ddpm"
    conditional = False

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, info: dict | None = None):
        self.denoiser = unet
        self.scheduler = scheduler
        self.info = dict(info or {})
        self.info["backbone"] = self.backbone

    @classmethod
    def create(cls, resolution: int, channels: Sequence[int] = (32, 64), in_channels: int = 1, **info):
        """A freshly initialised model (seed torch first for reproducible weights)."""
        unet = UNet2DModel(**tiny_unet_config(resolution, channels, in_channels))
        return cls(unet, DDPMScheduler(num_train_timesteps=1000), info)

    @property
    def num_train_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    @property
    def image_shape(self) -> tuple[int, int, int]:
        config = self.denoiser.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return config.in_channels, height, width

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images  # pixel-space model

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, timesteps)

    def predict_noise(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition=None) -> torch.Tensor:
        return self.denoiser(x_t, timesteps).sample

    def null_condition(self, batch_size: int):
        return None

    def guided_noise(self, x_t, timesteps, condition, guidance_scale: float | None) -> torch.Tensor:
        """eps used at sampling time; an unconditional model has no guidance."""
        return self.predict_noise(x_t, timesteps, condition)

    def condition_batch(self, conditions: Sequence | torch.Tensor, device) -> object:
        return None

    @torch.no_grad()
    def sample(self, conditions, num_inference_steps=None, guidance_scale=None, generator=None):
        """DDIM (eta 0) sampling, one image per entry of `conditions`, floats in [0, 1]."""
        num_inference_steps = num_inference_steps or 50
        device = next(self.denoiser.parameters()).device
        dtype = next(self.denoiser.parameters()).dtype
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        count = len(conditions)
        x = randn_tensor((count, *self.image_shape), generator=generator, device=device, dtype=dtype)
        condition = self.condition_batch(conditions, device)
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            for t in scheduler.timesteps:
                eps = self.guided_noise(x, t.expand(count), condition, guidance_scale)
                x = scheduler.step(eps, t, x).prev_sample
        finally:
            self.denoiser.train(was_training)
        return (x.float() / 2 + 0.5).clamp(0, 1)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        DDPMPipeline(unet=self.denoiser, scheduler=self.scheduler).save_pretrained(directory)
        index_path = directory / "model_index.json"
        index = json.loads(index_path.read_text())
        index[ERASE_KEY] = self.info
        index_path.write_text(json.dumps(index, indent=2) + "\n")
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            (directory / name).symlink_to(Path("unet") / name)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs):
        index = read_model_index(directory)
        directory = Path(directory)
        if not (directory / "unet").is_dir():
            raise UsageError(f"{str(directory)!r} has no unet/ subfolder; it is not a UNet diffusion model folder")
        unet = UNet2DModel.from_pretrained(directory, subfolder="unet", **kwargs)
        scheduler = DDPMScheduler.from_pretrained(directory, subfolder="scheduler")
        return cls(unet, scheduler, index.get(ERASE_KEY))
