"""The frozen VAE of latent diffusion models (DiT, Stable Diffusion): images in [-1, 1] <-> scaled latents."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


class FrozenVAE:
    """Wraps `AutoencoderKL`: encode samples the posterior, subtracts `shift_factor` (SD 3, Flux; 0 where the config
    has none) and scales by `scaling_factor`, as diffusers' training scripts do; decode inverts both."""

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae.requires_grad_(False).eval()

    @property
    def scale_factor(self) -> int:
        """Pixels per latent pixel (8 for SD and DiT)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def shift_factor(self) -> float:
        return self.vae.config.get("shift_factor") or 0.0

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.vae.device, self.vae.dtype)
        latents = self.vae.encode(images).latent_dist.sample().float()  # a bf16 / fp16 VAE still gives fp32 latents
        return (latents - self.shift_factor) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor + self.shift_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)


def tiny_vae(image_channels: int = 3, latent_channels: int = 4, channels=(16, 32)) -> AutoencoderKL:
    """A small random-init AutoencoderKL (tests): one downsampling per extra block."""
    return AutoencoderKL(
        in_channels=image_channels, out_channels=image_channels, latent_channels=latent_channels,
        block_out_channels=tuple(channels), layers_per_block=1, norm_num_groups=min(8, min(channels)),
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
    )
