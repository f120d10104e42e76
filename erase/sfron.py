"""SFR-on: Saliency Forgetting in the Remain-preserving manifold, online (Huang et al., NeurIPS 2024, arXiv 2409.19732).

Per iteration: a fast forget step (adaptive weighted gradient ascent, gradient and update confined to the
forget-remain balanced saliency mask, scaled by a decaying forget_alpha) followed by a slow unmasked remain step
(plain denoising loss on D_r) with the same optimizer. Formulas: ALGORITHMS.md section 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from erase.engine import LossLog, MaskedUpdate, PhaseTimer, Runtime, Stepper, endless_batches, make_accelerator
from erase.errors import UsageError
from erase.objectives import adaptive_ascent_loss, denoising_losses, gradient_ascent_loss, pseudo_target_losses
from erase.saliency import fisher_diagonal, mask_sparsity, saliency_mask, trainable_parameters


@dataclass
class SFRonConfig:
    """Defaults are the official DDPM CIFAR-10 settings unless a comment says otherwise."""

    steps: int = field(default=150, metadata={"help": "unlearning iterations (official DDPM: 150)"})
    batch_size: int = field(default=128, metadata={"help": "forget batch and remain batch size, each (official DDPM: 128+128)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (official DDPM: 1e-4)"})
    forget_alpha: float = field(default=10.0, metadata={"help": "scale of the forget step (official DDPM: 10)"})
    remain_alpha: float = field(default=1.0, metadata={"help": "scale of the remain step (official: 1)"})
    alpha_decay: str = field(
        default="cosine",
        metadata={"help": "forget_alpha schedule: cosine (official code), linear (paper text) or none",
                  "choices": ("cosine", "linear", "none")},
    )
    forget_objective: str = field(
        default="adaptive",
        metadata={"help": "adaptive (weighted gradient ascent), ga (plain ascent) or pseudo (map to --pseudo-class)",
                  "choices": ("adaptive", "ga", "pseudo")},
    )
    temperature: float = field(default=0.5, metadata={"help": "lambda of the adaptive weights; 0 = plain ascent (official DDPM: 0.5)"})
    pseudo_class: int | None = field(
        default=None, metadata={"help": "target class of the pseudo objective (default: a random remaining class per sample)"}
    )
    gamma: float = field(default=1.0, metadata={"help": "saliency threshold on F_forget / F_remain (official: 1.0)"})
    fisher_batches: int = field(default=20, metadata={"help": "batches per Fisher estimate (ours; the official code takes a pass)"})
    fisher_batch_size: int | None = field(default=None, metadata={"help": "Fisher batch size (default: --batch-size)"})
    fisher_guidance: float | None = field(
        default=2.0, metadata={"help": "evaluate the Fisher loss on the guided eps at this scale; unset = conditional (official DDPM: 2.0)"}
    )
    fisher_max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "clip each Fisher batch gradient to this norm before squaring (official DDPM: 1.0)"}
    )
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping of both steps (official: 1.0)"})
    forget_every: int = field(default=1, metadata={"help": "take a forget step every k-th iteration (official diffusion: 1)"})
    antithetic: bool = field(default=True, metadata={"help": "antithetic timesteps (t and T-1-t in one batch)"})


def alpha_schedule(base: float, step: int, steps: int, decay: str) -> float:
    """forget_alpha at `step`: cosine alpha(1 + cos(pi t/T))/2 (official code), linear alpha(1 - t/T) (paper), or constant."""
    if decay == "cosine":
        return base * (1.0 + math.cos(math.pi * step / steps)) / 2.0
    if decay == "linear":
        return base * (1.0 - step / steps)
    return base


def compute_mask(adapter, forget_batches, remain_batches, config: SFRonConfig, accelerator, timer: PhaseTimer):
    """Forget and remain Fisher diagonals -> the SFR-on saliency mask."""
    guidance = config.fisher_guidance if adapter.conditional else None
    with timer.phase("fisher"):
        fisher = {
            name: fisher_diagonal(
                adapter, batches, config.fisher_batches, guidance, config.fisher_max_grad_norm, accelerator, f"Fisher ({name})"
            )
            for name, batches in (("forget", forget_batches), ("remain", remain_batches))
        }
    with timer.phase("mask"):
        mask = saliency_mask(fisher["forget"], fisher["remain"], config.gamma)
    return mask


def sfron(adapter, forget_data, remain_data, config: SFRonConfig, runtime: Runtime = Runtime(), mask=None) -> dict:
    """Erase `forget_data` from `adapter.denoiser` in place; returns mask, sparsity, per-step losses and timings.

    `mask` (name -> bool tensor) skips the Fisher phase, e.g. to reuse a mask across runs.
    """
    if config.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {config.steps}")
    accelerator = make_accelerator(runtime)
    timer = PhaseTimer(accelerator.device)
    adapter.to(accelerator.device)  # frozen parts (VAE, text encoder) too; prepare() moves only the denoiser
    adapter.denoiser.train()
    optimizer = torch.optim.Adam(trainable_parameters(adapter.denoiser).values(), lr=config.lr)
    adapter.denoiser, optimizer = accelerator.prepare(adapter.denoiser, optimizer)

    forget_batches = endless_batches(forget_data, config.batch_size, runtime.seed, accelerator)
    remain_batches = endless_batches(remain_data, config.batch_size, runtime.seed + 1, accelerator)
    if mask is None:
        fisher_size = config.fisher_batch_size or config.batch_size
        mask = compute_mask(
            adapter,
            endless_batches(forget_data, fisher_size, runtime.seed + 2, accelerator),
            endless_batches(remain_data, fisher_size, runtime.seed + 3, accelerator),
            config,
            accelerator,
            timer,
        )
    masked = MaskedUpdate(trainable_parameters(adapter.denoiser), mask)
    stepper = Stepper(accelerator, adapter.denoiser, optimizer, config.max_grad_norm, runtime.grad_accum)
    forget_loss = make_forget_loss(adapter, forget_batches, remain_data, config, accelerator.device)

    def remain_loss():
        images, labels = next(remain_batches)
        losses = denoising_losses(adapter, adapter.encode(images), labels, antithetic=config.antithetic)
        return config.remain_alpha * losses.mean(), losses.mean()

    log = LossLog(["forget", "remain"], config.steps, accelerator.device)
    progress = tqdm(range(config.steps), desc="SFR-on", disable=not accelerator.is_local_main_process)
    with timer.phase("unlearn"):
        for step in progress:
            if step % config.forget_every == 0:
                alpha = alpha_schedule(config.forget_alpha, step, config.steps, config.alpha_decay)
                log.record("forget", step, stepper.step(lambda: forget_loss(alpha), masked))
            log.record("remain", step, stepper.step(remain_loss))
            if (step + 1) % runtime.log_every == 0 or step + 1 == config.steps:
                progress.set_postfix(log.check())
    adapter.denoiser = accelerator.unwrap_model(adapter.denoiser)
    return {
        "mask": mask,
        "mask_sparsity": mask_sparsity(mask),
        "losses": log.as_lists(),
        "timings": timer.seconds,
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
        "is_main_process": accelerator.is_main_process,
    }


def make_forget_loss(adapter, forget_batches, remain_data, config: SFRonConfig, device):
    """forget_loss(alpha) -> (alpha * objective, value logged as the forget loss).

    The logged value is the forget batch's mean denoising loss, or for the pseudo objective its mean squared
    distance to the pseudo-class prediction.
    """
    remain_classes = torch.unique(remain_data.labels).to(device)  # pseudo labels are drawn from these

    def forget_loss(alpha: float):
        images, labels = next(forget_batches)
        x0 = adapter.encode(images)
        if config.forget_objective == "pseudo":
            if config.pseudo_class is not None:
                pseudo = torch.full_like(labels, config.pseudo_class)
            else:
                pick = torch.randint(0, len(remain_classes), labels.shape, device=labels.device)
                pseudo = remain_classes[pick]
            losses = pseudo_target_losses(adapter, x0, labels, pseudo, config.antithetic)
            return alpha * losses.mean(), losses.mean()
        losses = denoising_losses(adapter, x0, labels, antithetic=config.antithetic)
        if config.forget_objective == "adaptive":
            objective = adaptive_ascent_loss(losses, config.temperature)
        else:
            objective = gradient_ascent_loss(losses)
        return alpha * objective, losses.mean()

    return forget_loss
