"""Gradient ascent (GA): raise the denoising loss on D_f, optionally with remain descent (docs/algorithms.md, section 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from erase.config import documented
from erase.engine import Runtime, WITH_REMAIN_STEP, remain_label_dropout_field, start_run


@documented
@dataclass
class GAConfig:
    """The plain baseline every unlearning paper reports; settings follow SalUn's DDPM baselines."""

    steps: int = field(default=1000, metadata={"range": "[1, inf)", "help": "iterations (SalUn DDPM baselines: 1000)"})
    batch_size: int = field(default=128, metadata={"range": "[1, inf)", "help": "forget (and remain) batch size (SalUn DDPM: 128)"})
    lr: float = field(default=1e-5, metadata={"range": "(0, inf)", "help": "Adam learning rate (SalUn DDPM: 1e-5)"})
    remain_alpha: float = field(default=0.0, metadata={"range": "[0, inf)", "help": "weight of remain descent; 0 = pure ascent"})
    max_grad_norm: float | None = field(default=1.0, metadata={"range": "(0, inf)", "help": "gradient clipping norm"})
    loss_reduction: str = field(
        default="mean", metadata={"help": "per-sample loss over pixels (SalUn DDPM baselines: mean)", "choices": ("sum", "mean")}
    )
    remain_label_dropout: float | None = remain_label_dropout_field(WITH_REMAIN_STEP)
    antithetic: bool = field(default=True, metadata={"help": "antithetic timesteps (t and T-1-t in one batch)"})


def ga(adapter, forget_data, remain_data, config: GAConfig, runtime: Runtime = Runtime(), mask=None,
        monitor=None) -> dict:
    """One step per iteration on -mean l_forget (+ remain_alpha * mean l_remain)."""
    run = start_run(adapter, forget_data, remain_data, runtime, monitor=monitor, steps=config.steps, lr=config.lr,
                    batch_size=config.batch_size, max_grad_norm=config.max_grad_norm,
                    forget_reduction=config.loss_reduction, remain_reduction=config.loss_reduction,
                    remain_label_dropout=config.remain_label_dropout)

    def forget_part():
        losses, _ = run.next_losses("forget", config.antithetic)
        return -losses.mean(), losses.mean()

    remain_part = run.remain_part(config.remain_alpha, config.antithetic)

    def iteration(step: int) -> dict:
        if config.remain_alpha == 0:
            return {"forget": run.stepper.step(forget_part)}
        forget, remain = run.stepper.step_parts([(forget_part, None), (remain_part, None)])
        return {"forget": forget, "remain": remain}

    log = run.loop(["forget", "remain"], iteration, runtime, "GA")
    return run.finish(log)
