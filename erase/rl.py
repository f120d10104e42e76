"""Random label (RL): map forget data to another class or a replacement prompt (SalUn's forget loss, Fan et al. 2024).

Forget loss = MSE(eps_theta(x_t, c_forget), stop_grad(eps_theta(x_t, c_pseudo))), c_pseudo a random remaining
class per sample, `--pseudo-class`, or `--replacement-prompt`; plus remain_alpha * remain denoising loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erase.engine import Runtime, start_run
from erase.objectives import pseudo_labels, pseudo_target_losses


@dataclass
class RLConfig:
    steps: int = field(default=1000, metadata={"help": "iterations (SalUn DDPM: 1000)"})
    batch_size: int = field(default=128, metadata={"help": "forget and remain batch size (SalUn DDPM: 128)"})
    lr: float = field(default=1e-5, metadata={"help": "Adam learning rate (SalUn DDPM: 1e-5)"})
    remain_alpha: float = field(default=1e-3, metadata={"help": "weight of the remain loss (SalUn DDPM: 1e-3)"})
    pseudo_class: int | None = field(
        default=None, metadata={"help": "target class (default: a random remaining class per sample)"}
    )
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping norm"})
    antithetic: bool = field(default=True, metadata={"help": "antithetic timesteps (t and T-1-t in one batch)"})


def relabel_parts(run, remain_data, config):
    """(forget part, remain part) loss functions shared by RL and SalUn."""
    adapter = run.adapter
    remain_classes = torch.unique(remain_data.labels).to(run.device)

    def forget_part():
        images, labels = next(run.forget_batches)
        pseudo = pseudo_labels(labels, config.pseudo_class, remain_classes)
        losses = pseudo_target_losses(adapter, adapter.encode(images), labels, pseudo, config.antithetic)
        return losses.mean(), losses.mean()

    def remain_part():
        losses, _ = run.next_losses("remain", config.antithetic)
        return config.remain_alpha * losses.mean(), losses.mean()

    return forget_part, remain_part


def rl(adapter, forget_data, remain_data, config: RLConfig, runtime: Runtime = Runtime(), mask=None,
        monitor=None) -> dict:
    run = start_run(adapter, forget_data, remain_data, runtime, monitor=monitor, steps=config.steps, lr=config.lr,
                    batch_size=config.batch_size, max_grad_norm=config.max_grad_norm)
    forget_part, remain_part = relabel_parts(run, remain_data, config)

    def iteration(step: int) -> dict:
        forget, remain = run.stepper.step_parts([(forget_part, None), (remain_part, None)])
        return {"forget": forget, "remain": remain}

    log = run.loop(["forget", "remain"], iteration, runtime, "RL")
    return run.finish(log)
