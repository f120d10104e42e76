"""SFR-on: Saliency Forgetting in the Remain-preserving manifold, online (Huang et al., NeurIPS 2024, arXiv 2409.19732).

Per iteration: a fast forget step (adaptive weighted gradient ascent, gradient and update confined to the
forget-remain balanced saliency mask, scaled by a decaying forget_alpha) followed by a slow unmasked remain step
(plain denoising loss on D_r) with the same optimizer. Formulas: ALGORITHMS.md section 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from erase.engine import MaskedUpdate, PhaseTimer, Runtime, endless_batches, start_run
from erase.objectives import (
    adaptive_ascent_loss,
    denoising_losses,
    gradient_ascent_loss,
    pseudo_labels,
    pseudo_target_losses,
)
from erase.saliency import fisher_diagonal, saliency_mask


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


def prepare_sfron(adapter, forget_data, remain_data, config: SFRonConfig, runtime: Runtime, mask=None, monitor=None):
    """Set up the run, compute (or take) the saliency mask, build the forget loss: shared by sfron and joint."""
    run = start_run(adapter, forget_data, remain_data, runtime, monitor=monitor, steps=config.steps, lr=config.lr,
                    batch_size=config.batch_size, max_grad_norm=config.max_grad_norm)
    if mask is None:
        fisher_size = config.fisher_batch_size or config.batch_size
        mask = compute_mask(
            adapter,
            endless_batches(forget_data, fisher_size, runtime.seed + 2, run.accelerator),
            endless_batches(remain_data, fisher_size, runtime.seed + 3, run.accelerator),
            config,
            run.accelerator,
            run.timer,
        )
    masked = MaskedUpdate(run.params(), mask)
    forget_loss = make_forget_loss(run, remain_data, config)

    def remain_loss():
        losses, _ = run.next_losses("remain", config.antithetic)
        return config.remain_alpha * losses.mean(), losses.mean()

    return run, mask, masked, forget_loss, remain_loss


def sfron(adapter, forget_data, remain_data, config: SFRonConfig, runtime: Runtime = Runtime(), mask=None,
        monitor=None) -> dict:
    """Erase `forget_data` from `adapter.denoiser` in place; returns mask, sparsity, per-step losses and timings.

    `mask` (name -> bool tensor) skips the Fisher phase, e.g. to reuse a mask across runs.
    """
    run, mask, masked, forget_loss, remain_loss = prepare_sfron(
        adapter, forget_data, remain_data, config, runtime, mask, monitor)

    def iteration(step: int) -> dict:
        values = {}
        if step % config.forget_every == 0:  # fast: masked forget step
            alpha = alpha_schedule(config.forget_alpha, step, config.steps, config.alpha_decay)
            values["forget"] = run.stepper.step(lambda: forget_loss(alpha), masked)
        values["remain"] = run.stepper.step(remain_loss)  # slow: unmasked remain step
        return values

    log = run.loop(["forget", "remain"], iteration, runtime, "SFR-on")
    return run.finish(log, mask)


def make_forget_loss(run, remain_data, config: SFRonConfig):
    """forget_loss(alpha) -> (alpha * objective, value logged as the forget loss).

    The logged value is the forget batch's mean denoising loss, or for the pseudo objective its mean squared
    distance to the pseudo-class prediction.
    """
    adapter = run.adapter
    remain_classes = torch.unique(remain_data.labels).to(run.device)  # pseudo labels are drawn from these

    def forget_loss(alpha: float):
        images, labels = next(run.forget_batches)
        x0 = adapter.encode(images)
        if config.forget_objective == "pseudo":
            pseudo = pseudo_labels(labels, config.pseudo_class, remain_classes)
            losses = pseudo_target_losses(adapter, x0, labels, pseudo, config.antithetic)
            return alpha * losses.mean(), losses.mean()
        losses = denoising_losses(adapter, x0, labels, antithetic=config.antithetic)
        if config.forget_objective == "adaptive":
            objective = adaptive_ascent_loss(losses, config.temperature)
        else:
            objective = gradient_ascent_loss(losses)
        return alpha * objective, losses.mean()

    return forget_loss
