"""ESD, Erased Stable Diffusion (Gandikota et al., ICCV 2023): negative guidance from a frozen copy.

Each iteration: draw x_t by running the frozen model's own DDIM sampler with the forget condition for a random
number of steps; then pull eps_theta(x_t, t, c) toward eps*(x_t, null) - eta (eps*(x_t, c) - eps*(x_t, null))
of the frozen copy eps*. No data is needed beyond the forget conditions. Which parameters train is
`--train-params` (erase.unlearn's `train_params`), as for every method: ESD-x is xattn, ESD-u noxattn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erase.config import documented
from erase.engine import Runtime, frozen_copy, start_run, swapped_denoiser
from erase.objectives import require_conditional

# ESD's names for which parameters train, as `--train-params` spells them (one way to choose them for every method;
# `--train-method` is ESD's deprecated spelling).
ESD_TRAIN_PARAMS = {"esd-x": "xattn", "esd-u": "noxattn", "full": "full"}


@documented
@dataclass
class ESDConfig:
    steps: int = field(default=1000, metadata={"range": "[1, inf)", "help": "iterations (ESD: 1000)"})
    batch_size: int = field(default=1, metadata={"range": "[1, inf)", "help": "forget conditions per iteration (ESD: 1)"})
    lr: float = field(default=1e-5, metadata={"range": "(0, inf)", "help": "Adam learning rate (ESD: 1e-5)"})
    eta: float = field(default=1.0, metadata={"range": "(0, inf)", "help": "negative guidance strength (ESD: 1 to 2)"})
    ddim_steps: int = field(default=50, metadata={"range": "[1, inf)", "help": "DDIM steps of the sampler that makes x_t (ESD: 50)"})
    start_guidance: float = field(default=3.0, metadata={"range": "[0, inf)", "help": "guidance of that sampler (ESD: 3)"})
    max_grad_norm: float | None = field(default=1.0, metadata={"range": "(0, inf)", "help": "gradient clipping norm"})


def esd_target(out_null: torch.Tensor, out_cond: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD's target: out*(x_t, null) - eta (out*(x_t, c) - out*(x_t, null)), in the model's prediction space."""
    return out_null - eta * (out_cond - out_null)


def esd(adapter, forget_data, remain_data, config: ESDConfig, runtime: Runtime = Runtime(), mask=None,
        monitor=None) -> dict:
    require_conditional(adapter, "--method esd", "its negative guidance eps(x_t, c) - eps(x_t, null)",
                        "use --method ga, or sfron with --forget-objective adaptive or ga")
    frozen = frozen_copy(adapter.denoiser)
    run = start_run(adapter, forget_data, remain_data, runtime, monitor=monitor, steps=config.steps, lr=config.lr,
                    batch_size=config.batch_size, max_grad_norm=config.max_grad_norm)
    frozen.to(run.device)
    generator = torch.Generator().manual_seed(runtime.seed)  # CPU draws: no device sync for the step count
    run.keep("stop_generator", generator)

    def esd_loss():
        _, labels = next(run.forget_batches)
        stop = int(torch.randint(0, config.ddim_steps, (1,), generator=generator))
        with swapped_denoiser(adapter, frozen), torch.no_grad():
            x_t, t = adapter.sample_latents(labels, config.ddim_steps, config.start_guidance, generator, stop_after=stop)
            out_cond = adapter.model_output(x_t, t, labels)
            out_null = adapter.model_output(x_t, t, adapter.null_condition(len(labels)))
        target = esd_target(out_null, out_cond, config.eta)
        loss = (adapter.model_output(x_t, t, labels).float() - target.float()).pow(2).mean()
        return loss, loss

    log = run.loop(["forget"], lambda step: {"forget": run.stepper.step(esd_loss)}, runtime, "ESD")
    return run.finish(log)
