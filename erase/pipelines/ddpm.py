"""Unconditional DDPM: diffusers `UNet2DModel` + `DDPMScheduler`, the layout of public DDPM checkpoints.

Folder layout (what `DDPMPipeline.from_pretrained` reads): `model_index.json`, `unet/`, `scheduler/`, plus
relative links `config.json` and `diffusion_pytorch_model.safetensors` to the UNet's files, so that
`UNet2DModel.from_pretrained(folder)` works without `subfolder="unet"` and without a second copy of the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from erase.errors import ModelError
from erase.pipelines.base import ERASE_KEY, AdapterBase, load_scheduler, read_model_index, write_erase_info


def tiny_unet_config(resolution: int, channels: Sequence[int] = (32, 64), in_channels: int = 1,
                     attention: bool = False, layers_per_block: int = 1, **extra) -> dict:
    """A small UNet2DModel config sized for CPU (tests, the MNIST demo); `attention` adds self-attention at the
    lowest-resolution level (down and up)."""
    down = ["DownBlock2D"] * len(channels)
    up = ["UpBlock2D"] * len(channels)
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return dict(
        sample_size=resolution,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=min(8, min(channels)),
        **extra,
    )


class DDPMAdapter(AdapterBase):
    """Unconditional UNet2DModel; conditions are ignored and guidance does not apply."""

    backbone = "ddpm"
    conditional = False
    pipeline_class = "DDPMPipeline"
    default_data = "mnist"

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, info: dict | None = None):
        super().__init__(unet, scheduler, info)

    @classmethod
    def create(cls, resolution: int, channels: Sequence[int] = (32, 64), in_channels: int = 1, **info):
        """A freshly initialised model (seed torch first for reproducible weights)."""
        unet = UNet2DModel(**tiny_unet_config(resolution, channels, in_channels))
        return cls(unet, DDPMScheduler(num_train_timesteps=1000), info)

    num_classes = 0  # unconditional: no classes to erase or keep
    class_names: list[str] = []

    def model_output(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition=None) -> torch.Tensor:
        return self.denoiser(x_t, timesteps).sample

    def null_condition(self, batch_size: int):
        return None

    def condition_batch(self, conditions, device):
        return None

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.to_pipeline().save_pretrained(directory)
        write_erase_info(directory, self.info)
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            (directory / name).symlink_to(Path("unet") / name)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs):
        index = read_model_index(directory)
        directory = Path(directory)
        if not (directory / "unet").is_dir():
            raise ModelError(f"{str(directory)!r} has no unet/ subfolder; it is not a UNet diffusion model folder")
        unet = UNet2DModel.from_pretrained(directory, subfolder="unet", **kwargs)
        return cls(unet, load_scheduler(directory), index.get(ERASE_KEY))

    @classmethod
    def from_pipeline(cls, pipeline, denoiser, info: dict, **kwargs):
        """An in-memory DDPMPipeline, training `denoiser` (its UNet or a copy)."""
        return cls(denoiser, pipeline.scheduler, info)

    def to_pipeline(self):
        return DDPMPipeline(unet=self.denoiser, scheduler=self.scheduler)
