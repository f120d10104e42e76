"""Denoising loss on a fixed draw of images, noise and timesteps: comparable across models and runs."""

from __future__ import annotations

import torch

from erase.objectives import denoising_losses


@torch.no_grad()
def fixed_draw_losses(adapter, dataset, num_samples: int = 512, seed: int = 123,
                      batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample denoising losses of `adapter` on `num_samples` (image, noise, timestep) triples drawn with `seed`,
    and their timesteps (both on the CPU)."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, len(dataset), (num_samples,), generator=generator)
    noise, timesteps = adapter.draw(torch.zeros(num_samples, *adapter.latent_shape), generator=generator)  # latents
    device = next(adapter.denoiser.parameters()).device
    losses = []
    for start in range(0, num_samples, batch_size):
        part = slice(start, start + batch_size)
        x0 = adapter.encode(dataset.images[index[part]].to(device))
        losses.append(denoising_losses(adapter, x0, dataset.labels[index[part]].to(device),
                                       timesteps[part].to(device), noise[part].to(device)).float().cpu())
    return torch.cat(losses), timesteps.cpu()


def fixed_draw_loss(adapter, dataset, num_samples: int = 512, seed: int = 123, batch_size: int = 256) -> float:
    """Mean denoising loss of `adapter` on `num_samples` (image, noise, timestep) triples drawn with `seed`."""
    losses, _ = fixed_draw_losses(adapter, dataset, num_samples, seed, batch_size)
    return float(losses.double().mean())
