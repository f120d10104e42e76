"""Random label (RL): map forget data to another class or a replacement prompt (SalUn's forget loss, Fan et al. 2024).

Forget loss = MSE(eps_theta(x_t, c_forget), stop_grad(eps_theta(x_t, c_pseudo))), c_pseudo one fixed class (SalUn's
DDPM code: (k + 1) mod 10; `--pseudo-class`; `--replacement-prompt`) or, with `--pseudo-random`, a random remaining
class per sample; plus remain_alpha * remain denoising loss.

SalUn's DDPM code takes the forget term as `nn.MSELoss()` (mean over pixels) and sums the remain term over pixels
with weight 1e-3: relative to the forget term that is 1e-3 x C x H x W = 3.072 at CIFAR-10's 3x32x32, but only 0.256
at 16x16x1, twelve times weaker. The defaults keep the published relative weight at any resolution: both terms are
pixel means and remain_alpha is 3.072 (`--remain-reduction sum --remain-alpha 1e-3` is SalUn's literal form).
Remain labels are dropped to null at the base model's training rate, as in SalUn's code (cond_drop_prob 0.1), so
the unconditional branch keeps training.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from erase.config import documented
from erase.engine import Runtime, WITH_REMAIN_STEP, remain_label_dropout_field, start_run
from erase.objectives import pseudo_labels, pseudo_target_losses, require_conditional

RELABEL_ZERO = "its forget loss, the squared gap eps(x_t, c_forget) - eps(x_t, c_pseudo),"
RELABEL_INSTEAD = "use --method ga, or sfron with --forget-objective adaptive or ga"


@documented
@dataclass
class RLConfig:
    steps: int = field(default=1000, metadata={"range": "[1, inf)", "help": "iterations (SalUn DDPM: 1000)"})
    batch_size: int = field(default=128, metadata={"range": "[1, inf)", "help": "forget and remain batch size (SalUn DDPM: 128)"})
    lr: float = field(default=1e-5, metadata={"range": "(0, inf)", "help": "Adam learning rate (SalUn DDPM: 1e-5)"})
    remain_alpha: float = field(default=3.072, metadata={"range": "[0, inf)", "help": "weight of the remain loss: 3.072 on a pixel-mean remain "
                                                                   "loss is SalUn DDPM's 1e-3 on a pixel-sum loss at "
                                                                   "3x32x32, its relative weight at any resolution"})
    pseudo_class: int | None = field(
        default=None, metadata={"range": "[0, inf)", "help": "target class (default: the next remaining class after the forget class, "
                                        "SalUn DDPM's (k + 1) mod 10)"}
    )
    pseudo_random: bool = field(
        default=False, metadata={"help": "a random remaining class per sample instead of one fixed class"}
    )
    loss_reduction: str = field(
        default="mean", metadata={"help": "per-sample forget loss over pixels: mean (SalUn DDPM's nn.MSELoss) or sum",
                                  "choices": ("sum", "mean")}
    )
    remain_reduction: str = field(
        default="mean", metadata={**WITH_REMAIN_STEP,
                                  "help": "per-sample remain loss over pixels: mean (the default, with remain_alpha "
                                          "3.072) or sum (SalUn DDPM's form, with its remain_alpha 1e-3)",
                                  "choices": ("sum", "mean")}
    )
    remain_label_dropout: float | None = remain_label_dropout_field(WITH_REMAIN_STEP)
    max_grad_norm: float | None = field(default=1.0, metadata={"range": "(0, inf)", "help": "gradient clipping norm"})
    antithetic: bool = field(default=True, metadata={"help": "antithetic timesteps (t and T-1-t in one batch)"})


def start_relabel_run(adapter, forget_data, remain_data, config, runtime, monitor):
    """start_run with RL's and SalUn's loss conventions."""
    return start_run(adapter, forget_data, remain_data, runtime, monitor=monitor, steps=config.steps, lr=config.lr,
                     batch_size=config.batch_size, max_grad_norm=config.max_grad_norm,
                     forget_reduction=config.loss_reduction, remain_reduction=config.remain_reduction,
                     remain_label_dropout=config.remain_label_dropout)


def relabel_parts(run, forget_data, remain_data, config):
    """(forget part, remain part) loss functions shared by RL and SalUn."""
    adapter = run.adapter
    pseudo_class, remain_classes = run.pseudo_targets(forget_data, remain_data, config.pseudo_class,
                                                      config.pseudo_random)

    def forget_part():
        images, labels = next(run.forget_batches)
        pseudo = pseudo_labels(labels, pseudo_class, remain_classes, config.pseudo_random)
        losses = pseudo_target_losses(adapter, adapter.encode(images), labels, pseudo, config.antithetic,
                                      run.conventions["forget_reduction"])
        return losses.mean(), losses.mean()

    return forget_part, run.remain_part(config.remain_alpha, config.antithetic)


def rl(adapter, forget_data, remain_data, config: RLConfig, runtime: Runtime = Runtime(), mask=None,
        monitor=None) -> dict:
    require_conditional(adapter, "--method rl", RELABEL_ZERO, RELABEL_INSTEAD)
    run = start_relabel_run(adapter, forget_data, remain_data, config, runtime, monitor)
    forget_part, remain_part = relabel_parts(run, forget_data, remain_data, config)

    def iteration(step: int) -> dict:
        forget, remain = run.stepper.step_parts([(forget_part, None), (remain_part, None)])
        return {"forget": forget, "remain": remain}

    log = run.loop(["forget", "remain"], iteration, runtime, "RL")
    return run.finish(log)
