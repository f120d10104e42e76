"""What a denoiser was trained to predict, and how its training noise and timesteps are drawn.

Every adapter owns one of these, built from its own scheduler's config (k-diffusion's wrappers own their
parameterisation the same way), so every method trains toward the target the model was trained toward:

- `NoisePrediction`: DDPM-family schedules (betas; DDPM, DDIM, Euler, DPM-Solver configs alike).
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t uniform over the integers 0..T-1, and the target by the
  scheduler's `prediction_type`: `epsilon` (eps), `v_prediction` (v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0,
  Salimans & Ho 2022; SD 2.x 768 px) or `sample` (x0).
- `FlowMatching`: rectified flow (SD 3.x, Flux.1; `FlowMatchEulerDiscreteScheduler`).
  x_sigma = (1 - sigma) x0 + sigma eps, target the velocity eps - x0 (Esser et al. 2024, eq. 2 and 3). sigma is
  drawn as diffusers' own training scripts draw it: u from `density` ("logit_normal", SD 3's; "none", uniform,
  Flux's), the index floor(u T) into the scheduler's training grid of sigmas (which carries its static `shift`).
  Timesteps are sigma * T as floats, so T = num_train_timesteps means "pure noise" for both families.

Sampling uses DDIM (eta 0) from the model's schedule config for the DDPM family (a deterministic sampler of the
same schedule and prediction type as any DDPM-family scheduler the folder names), and the model's own
`FlowMatchEulerDiscreteScheduler` for flow models.
"""

from __future__ import annotations

import torch

from erase.errors import ModelError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
FLOW_DENSITIES = ("none", "logit_normal")


def gaussian_like(x0: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard normal noise of x0's shape: from the global RNG on x0's device, or from a seeded (CPU) generator."""
    if generator is None:
        return torch.randn_like(x0)
    return torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)


def broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) matching `like`'s rank, in `like`'s dtype and device."""
    return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class NoisePrediction:
    """eps / v / x0 targets on a DDPM-family noise schedule; timesteps are integers in [0, T)."""

    family = "ddpm"

    def __init__(self, scheduler_config):
        from diffusers import DDPMScheduler

        self.prediction_type = scheduler_config.get("prediction_type", "epsilon") or "epsilon"
        if self.prediction_type not in PREDICTION_TYPES:
            raise ModelError(f"the scheduler's prediction_type {self.prediction_type!r} is unknown; erase trains "
                             f"{', '.join(PREDICTION_TYPES)} (DDPM-family schedulers) and flow matching "
                             "(FlowMatchEulerDiscreteScheduler): fix scheduler/scheduler_config.json")
        self.config = scheduler_config
        self.schedule = DDPMScheduler.from_config(scheduler_config)  # any DDPM-family config gives the same betas

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.config.num_train_timesteps

    def draw_timesteps(self, batch_size: int, device, antithetic: bool = False, generator=None) -> torch.Tensor:
        """Uniform integers in [0, T); antithetic pairs (t, T-1-t) halve the variance of the timestep average."""
        total = self.num_train_timesteps
        where = device if generator is None else "cpu"  # a seeded generator draws on the CPU
        if not antithetic:
            return torch.randint(0, total, (batch_size,), device=where, generator=generator).to(device)
        half = torch.randint(0, total, ((batch_size + 1) // 2,), device=where, generator=generator)
        return torch.cat([half, total - 1 - half])[:batch_size].to(device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.schedule.add_noise(x0, noise, timesteps)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.schedule.get_velocity(x0, noise, timesteps)
        return x0

    def record(self) -> dict:
        return {"prediction_type": self.prediction_type, "target": TARGET_FORMULAS[self.prediction_type],
                "timesteps": f"uniform integers in [0, {self.num_train_timesteps})",
                "beta_schedule": self.schedule.config.beta_schedule,
                "sampler": "DDIM, eta 0 (the model's schedule and prediction type)"}

    def sampler(self, num_inference_steps: int, device, image_seq_len: int | None = None):
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler


class FlowMatching:
    """Rectified-flow velocity target; timesteps are sigma * T (floats)."""

    family = "flow"
    prediction_type = "flow_matching"

    def __init__(self, scheduler_config, density: str = "none", logit_mean: float = 0.0, logit_std: float = 1.0):
        from diffusers import FlowMatchEulerDiscreteScheduler

        if density not in FLOW_DENSITIES:
            raise ValueError(f"sigma density must be one of {FLOW_DENSITIES}, got {density!r}")
        self.config = scheduler_config
        self.schedule = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        self.density, self.logit_mean, self.logit_std = density, logit_mean, logit_std

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.config.num_train_timesteps

    def draw_timesteps(self, batch_size: int, device, antithetic: bool = False, generator=None) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        count = (batch_size + 1) // 2 if antithetic else batch_size
        u = compute_density_for_timestep_sampling(self.density, count, self.logit_mean, self.logit_std,
                                                  generator=generator)  # (count,) in [0, 1], on the CPU
        if antithetic:
            u = torch.cat([u, 1.0 - u])[:batch_size]
        total = self.num_train_timesteps
        index = (u * total).long().clamp(0, total - 1)
        return self.schedule.timesteps[index].to(device)

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timesteps.float() / self.num_train_timesteps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sigma = broadcast(self.sigmas(timesteps), x0)
        return (1.0 - sigma) * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def record(self) -> dict:
        config = self.schedule.config
        return {"prediction_type": self.prediction_type, "target": TARGET_FORMULAS[self.prediction_type],
                "timesteps": f"sigma * {self.num_train_timesteps}, sigma from the scheduler's training grid at "
                             f"index floor(u * {self.num_train_timesteps})",
                "sigma_density": (f"logit_normal(mean {self.logit_mean}, std {self.logit_std})"
                                  if self.density == "logit_normal" else "uniform"),
                "shift": None if config.get("use_dynamic_shifting") else config.get("shift", 1.0),
                "sampler": "FlowMatchEulerDiscreteScheduler (the model's own config)"}

    def sampler(self, num_inference_steps: int, device, image_seq_len: int | None = None):
        import numpy as np
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.config)
        config = scheduler.config
        kwargs = {}
        if config.get("use_dynamic_shifting"):  # Flux: the shift mu grows with the image's token count
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            kwargs["mu"] = calculate_shift(image_seq_len or config.get("base_image_seq_len", 256),
                                           config.get("base_image_seq_len", 256),
                                           config.get("max_image_seq_len", 4096),
                                           config.get("base_shift", 0.5), config.get("max_shift", 1.15))
            kwargs["sigmas"] = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
            scheduler.set_timesteps(device=device, **kwargs)
        else:
            scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler


TARGET_FORMULAS = {
    "epsilon": "eps",
    "v_prediction": "sqrt(abar_t) eps - sqrt(1 - abar_t) x0",
    "sample": "x0",
    "flow_matching": "eps - x0 at x_sigma = (1 - sigma) x0 + sigma eps",
}


def training_target(scheduler, **flow_options):
    """The target object for a scheduler (or its config): flow matching for FlowMatch* schedulers, else the
    DDPM family with the config's prediction_type."""
    config = getattr(scheduler, "config", scheduler)
    name = type(scheduler).__name__ if hasattr(scheduler, "config") else config.get("_class_name", "")
    if name.startswith("FlowMatch") or str(config.get("_class_name", "")).startswith("FlowMatch"):
        return FlowMatching(config, **flow_options)
    if "beta_start" not in config and "trained_betas" not in config:
        raise ModelError(f"the scheduler {name or config.get('_class_name')!r} has neither a beta schedule nor flow "
                         "matching sigmas; erase trains DDPM-family (epsilon, v_prediction, sample) and flow-matching "
                         "models")
    return NoisePrediction(config)
