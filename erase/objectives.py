"""Per-sample denoising losses and the forget objectives built on them (ALGORITHMS.md sections 1b and 3).

Convention: a per-sample loss is the squared error averaged over the sample's elements, shape (B,).
"""

from __future__ import annotations

import torch


def sample_timesteps(batch_size: int, num_train_timesteps: int, device, antithetic: bool = False) -> torch.Tensor:
    """Uniform timesteps; antithetic pairs (t, T-1-t) halve the variance of the timestep average."""
    if not antithetic:
        return torch.randint(0, num_train_timesteps, (batch_size,), device=device)
    half = torch.randint(0, num_train_timesteps, ((batch_size + 1) // 2,), device=device)
    return torch.cat([half, num_train_timesteps - 1 - half])[:batch_size]


def denoising_losses(
    adapter,
    x0: torch.Tensor,
    condition,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    guidance_scale: float | None = None,
    antithetic: bool = False,
) -> torch.Tensor:
    """l_i = mean || eps - eps_theta(x_t, t, c_i) ||^2 per sample, (B,); with `guidance_scale`, on the guided eps."""
    noise = torch.randn_like(x0) if noise is None else noise
    if timesteps is None:
        timesteps = sample_timesteps(x0.shape[0], adapter.num_train_timesteps, x0.device, antithetic)
    x_t = adapter.add_noise(x0, noise, timesteps)
    if guidance_scale is None:
        eps = adapter.predict_noise(x_t, timesteps, condition)
    else:
        eps = adapter.guided_noise(x_t, timesteps, condition, guidance_scale)
    return (eps.float() - noise.float()).pow(2).flatten(1).mean(1)


def adaptive_weights(losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """SFR-on eq. for w_i: (1 / (l_i^lambda + 1e-8)) normalised to sum to B; lower loss -> larger weight.

    Computed from detached losses; temperature (lambda) 0 gives uniform weights, i.e. plain gradient ascent.
    """
    inverse = 1.0 / (losses.detach().float().pow(temperature) + 1e-8)
    return inverse / inverse.sum() * losses.shape[0]


def adaptive_ascent_loss(losses: torch.Tensor, temperature: float) -> torch.Tensor:
    """SFR-on adaptive weighted gradient ascent: -mean_i(w_i * l_i) (minimised, so l_i is pushed up)."""
    return -(adaptive_weights(losses, temperature) * losses).mean()


def gradient_ascent_loss(losses: torch.Tensor) -> torch.Tensor:
    """Plain gradient ascent on the forget set: -mean_i(l_i)."""
    return -losses.mean()


def pseudo_target_losses(adapter, x0: torch.Tensor, condition, pseudo_condition, antithetic: bool = False) -> torch.Tensor:
    """Per-sample MSE between eps_theta(x_t, t, c_forget) and the detached eps_theta(x_t, t, c_pseudo).

    The random-label / replacement-prompt forget loss (SalUn's, and the SFR-on Stable Diffusion script's).
    """
    noise = torch.randn_like(x0)
    timesteps = sample_timesteps(x0.shape[0], adapter.num_train_timesteps, x0.device, antithetic)
    x_t = adapter.add_noise(x0, noise, timesteps)
    with torch.no_grad():
        target = adapter.predict_noise(x_t, timesteps, pseudo_condition).float()
    return (adapter.predict_noise(x_t, timesteps, condition).float() - target).pow(2).flatten(1).mean(1)


def pseudo_labels(labels: torch.Tensor, pseudo_class: int | None, remain_classes: torch.Tensor) -> torch.Tensor:
    """The pseudo condition per sample: `pseudo_class` for all, or a random remaining class each (SalUn's RL)."""
    if pseudo_class is not None:
        return torch.full_like(labels, pseudo_class)
    pick = torch.randint(0, len(remain_classes), labels.shape, device=labels.device)
    return remain_classes[pick]
