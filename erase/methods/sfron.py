"""SFR-on: Saliency Forgetting in the Remain-preserving manifold, online (Huang et al., NeurIPS 2024, arXiv 2409.19732).

Per iteration: a fast forget step (adaptive weighted gradient ascent, gradient and update confined to the
forget-remain balanced saliency mask, scaled by a decaying forget_alpha) followed by a slow unmasked remain step
(plain denoising loss on D_r) with the same optimizer. Formulas: docs/algorithms.md, section 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from erase.config import acts_when, documented
from erase.engine import (
    MaskedUpdate,
    PhaseTimer,
    Runtime,
    WITH_REMAIN_STEP,
    endless_batches,
    remain_label_dropout_field,
    start_run,
)
from erase.objectives import (
    adaptive_ascent_loss,
    denoising_losses,
    gradient_ascent_loss,
    pseudo_labels,
    pseudo_target_losses,
    require_conditional,
)
from erase.errors import OptionError, option
from erase.memory import release_freed_memory, tensor_bytes
from erase.saliency import fisher_diagonal, saliency_mask, trainable_parameters
from erase.sharding import shard_mask


PSEUDO_ONLY = acts_when("forget_objective", "pseudo", lambda c: c.forget_objective == "pseudo")


@documented
@dataclass
class SFRonConfig:
    """Defaults are the official DDPM CIFAR-10 settings unless a comment says otherwise."""

    steps: int = field(default=150, metadata={"range": "[1, inf)", "help": "unlearning iterations (official DDPM: 150)"})
    batch_size: int = field(default=128, metadata={"range": "[1, inf)", "help": "forget batch and remain batch size, each (official DDPM: 128+128)"})
    lr: float = field(default=1e-4, metadata={"range": "(0, inf)", "help": "Adam learning rate (official DDPM: 1e-4)"})
    forget_alpha: float = field(default=10.0, metadata={"range": "(0, inf)", "help": "scale of the forget step (official DDPM: 10)"})
    remain_alpha: float = field(default=1.0, metadata={"range": "[0, inf)", "help": "scale of the remain step (official: 1)"})
    alpha_placement: str = field(
        default="loss",
        metadata={**acts_when("max_grad_norm", "set", lambda c: c.max_grad_norm is not None),
                  "help": "where forget_alpha acts: loss (multiplies the forget loss before clipping, the official "
                          "code; with the sum loss the clip binds and alpha has no effect) or clipped (multiplies the "
                          "clipped forget gradient, so the forget step is alpha times the clip norm)",
                  "choices": ("loss", "clipped")},
    )
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
    temperature: float = field(default=0.5, metadata={
        **acts_when("forget_objective", "adaptive", lambda c: c.forget_objective == "adaptive"), "range": "[0, inf)",
        "help": "lambda of the adaptive weights; 0 = plain ascent (official DDPM: 0.5)"})
    pseudo_class: int | None = field(
        default=None, metadata={**PSEUDO_ONLY, "range": "[0, inf)", "help": "target class of the pseudo objective (default: the next remaining class after "
                                        "the forget class, as SalUn's DDPM code maps k to k + 1)"}
    )
    pseudo_random: bool = field(
        default=False, metadata={**PSEUDO_ONLY, "help": "pseudo objective: a random remaining class per sample instead of one fixed class"}
    )
    pseudo_anchor: str = field(
        default="fixed", metadata={**PSEUDO_ONLY, "choices": ("fixed", "nearest"),
                                   "help": "pseudo objective on prompts: fixed (every forget prompt maps to one "
                                           "remain prompt, as classes do) or nearest (each forget prompt maps to the "
                                           "remain prompt that shares most of its words: the concept swapped, the "
                                           "rest kept)"}
    )
    loss_reduction: str = field(
        default="sum", metadata={"help": "per-sample loss over pixels, for the forget, remain and Fisher losses: sum "
                                         "(the official DDPM code, whose forget_alpha and clip norms assume it) or mean",
                                 "choices": ("sum", "mean")}
    )
    remain_label_dropout: float | None = remain_label_dropout_field(WITH_REMAIN_STEP)
    gamma: float = field(default=1.0, metadata={"range": "(0, inf)", "help": "saliency threshold on F_forget / F_remain (official: 1.0)"})
    fisher_batches: int = field(default=20, metadata={"range": "[1, inf)", "help": "batches per Fisher estimate (ours; the official code takes a pass)"})
    fisher_groups: int = field(
        default=1, metadata={"range": "[1, inf)", "help": "compute the Fisher and mask for 1/G of the parameters at a "
                                                           "time (one process): G times the Fisher compute, 3/G of "
                                                           "its memory; the same mask (ours, for large models)"}
    )
    fisher_batch_size: int | None = field(default=None, metadata={"range": "[1, inf)", "help": "Fisher batch size (default: --batch-size)"})
    fisher_guidance: float | None = field(
        default=3.0, metadata={"range": "[0, inf)", "help": "evaluate the Fisher loss on the guided eps eps_null + s (eps_c - eps_null) at "
                                       "this s; unset = conditional (official DDPM: cond_scale 2.0 in (1 + w) eps_c - "
                                       "w eps_null, which is s = 3 here)"}
    )
    fisher_max_grad_norm: float | None = field(
        default=1.0, metadata={"range": "(0, inf)", "help": "clip each Fisher batch gradient to this norm before squaring (official DDPM: 1.0)"}
    )
    max_grad_norm: float | None = field(default=1.0, metadata={"range": "(0, inf)", "help": "gradient clipping of both steps (official: 1.0)"})
    mask_mode: str = field(
        default="restore", metadata={"help": "restore (mask-0 entries are put back after the forget step, so they never "
                                             "move in it) or gradient (only the gradient is masked, the official form: "
                                             "Adam momentum from remain steps still moves them)",
                                     "choices": ("restore", "gradient")}
    )
    forget_every: int = field(default=1, metadata={"range": "[1, inf)", "help": "take a forget step every k-th iteration (official diffusion: 1)"})
    forget_dense: int = field(
        default=0, metadata={**acts_when("forget_every", "above 1", lambda c: c.forget_every > 1),
                             "range": "[0, inf)",
                             "help": "take a forget step on every one of the first N iterations, then every "
                                     "--forget-every-th (ours: erase fast, then let remain steps repair)"}
    )
    antithetic: bool = field(default=True, metadata={"help": "antithetic timesteps (t and T-1-t in one batch)"})

    def refuse_conflicts(self, adapter) -> None:
        """Options this model or these other options cannot honour, refused before any data is made
        (erase.api.method_config calls it; so does the method itself, for direct callers)."""
        if self.forget_objective != "pseudo" or self.pseudo_anchor != "nearest":
            return
        if not adapter.takes_prompts:
            raise OptionError(f"{option('--pseudo-anchor')} nearest matches prompts by their words, and this "
                              f"{adapter.backbone} model takes class ids; use --pseudo-anchor fixed or --pseudo-class")
        if self.pseudo_random or self.pseudo_class is not None:
            raise OptionError(f"{option('--pseudo-anchor')} nearest chooses each forget prompt's anchor itself; drop "
                              f"{option('--pseudo-random')} / {option('--pseudo-class')} or use --pseudo-anchor fixed")


# Settings per backbone: the official ones under the conventions their code used (docs/algorithms.md, section 1),
# and for cfg_unet the official conventions with the pseudo objective and a dense-then-sparse forget schedule. Why
# these values: docs/presets.md. (joint takes one summed step: erase.methods.NOT_READ lists what it never reads.)
SFRON_PRESETS = {
    "cfg_unet": {"batch_size": 64, "steps": 120, "lr": 2e-4, "forget_objective": "pseudo", "alpha_placement": "clipped",
                 "forget_every": 2, "forget_dense": 20, "fisher_batches": 10},
    "dit": {"steps": 600, "batch_size": 1, "lr": 1e-4, "forget_objective": "ga", "forget_alpha": 1e-3,
            "loss_reduction": "mean", "fisher_guidance": None, "fisher_max_grad_norm": None},
    "pixel_text": {"batch_size": 64, "steps": 120, "lr": 2e-4, "forget_objective": "pseudo", "pseudo_anchor": "nearest",
                   "alpha_placement": "clipped", "forget_every": 2, "forget_dense": 20, "fisher_batches": 10},
    "stable_diffusion": {"steps": 1000, "batch_size": 2, "lr": 1e-5, "forget_objective": "pseudo",
                         "forget_alpha": 1.0, "remain_alpha": 1.0, "loss_reduction": "mean"},
}


def alpha_schedule(base: float, step: int, steps: int, decay: str) -> float:
    """forget_alpha at `step`: cosine alpha(1 + cos(pi t/T))/2 (official code), linear alpha(1 - t/T) (paper), or constant."""
    if decay == "cosine":
        return base * (1.0 + math.cos(math.pi * step / steps)) / 2.0
    if decay == "linear":
        return base * (1.0 - step / steps)
    return base


def compute_mask(adapter, forget_batches, remain_batches, config: SFRonConfig, accelerator, timer: PhaseTimer,
                 held: dict | None = None):
    """Forget and remain Fisher diagonals -> the SFR-on saliency mask.

    Both Fishers are float32 (one accumulator per trained entry each); the mask consumes them tensor by tensor and
    they are gone before the optimizer allocates its state. With `fisher_groups` G > 1 the parameters are split
    into G groups of about equal size and each group's two Fishers and mask are computed from the same batches,
    noise and timesteps (streams and random state replayed), so the mask is the one G = 1 gives.
    `held["fisher_bytes"]` records the largest pair of Fishers held."""
    guidance = config.fisher_guidance if adapter.conditional else None
    params = trainable_parameters(adapter.denoiser)
    groups = parameter_groups(params, config.fisher_groups)
    random_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    mask = {}
    for number, group in enumerate(groups):
        if number > 0:  # replay: the same batches, noise and timesteps for every group
            torch.random.set_rng_state(random_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
            forget_batches.load_state_dict({"drawn": 0})
            remain_batches.load_state_dict({"drawn": 0})
        only = None if len(groups) == 1 else group
        label = "" if len(groups) == 1 else f", group {number + 1}/{len(groups)}"
        with timer.phase("fisher"):
            forget, remain = (
                fisher_diagonal(adapter, batches, config.fisher_batches, guidance, config.fisher_max_grad_norm,
                                accelerator, f"Fisher ({name}{label})", reduction=config.loss_reduction, only=only)
                for name, batches in (("forget", forget_batches), ("remain", remain_batches))
            )
        if held is not None:
            held["fisher_bytes"] = max(held.get("fisher_bytes") or 0,
                                       tensor_bytes(forget.values()) + tensor_bytes(remain.values()))
        with timer.phase("mask"):
            mask.update(saliency_mask(forget, remain, config.gamma, consume=True))
            del forget, remain
            release_freed_memory()  # the Fishers' heap pages, before the optimizer allocates its state
    return {name: mask[name] for name in params}


def parameter_groups(params: dict, count: int) -> list[set[str]]:
    """`count` groups of parameter names in model order, each about 1/count of the entries."""
    total = sum(p.numel() for p in params.values())
    groups, size = [set()], 0
    for name, p in params.items():
        if size >= total * len(groups) / count and len(groups) < count:
            groups.append(set())
        groups[-1].add(name)
        size += p.numel()
    return [group for group in groups if group]


def prepare_sfron(adapter, forget_data, remain_data, config: SFRonConfig, runtime: Runtime, mask=None, monitor=None):
    """Set up the run, compute (or take) the saliency mask, build the forget loss: shared by sfron and joint."""
    if config.forget_objective == "pseudo":
        require_conditional(adapter, "--forget-objective pseudo", "its forget loss, the squared gap "
                            "eps(x_t, c_forget) - eps(x_t, c_pseudo),", "use --forget-objective adaptive or ga")
        config.refuse_conflicts(adapter)
    run = start_run(adapter, forget_data, remain_data, runtime, monitor=monitor, steps=config.steps, lr=config.lr,
                    batch_size=config.batch_size, max_grad_norm=config.max_grad_norm,
                    forget_reduction=config.loss_reduction, remain_reduction=config.loss_reduction,
                    remain_label_dropout=config.remain_label_dropout)
    if mask is None:
        fisher_size = config.fisher_batch_size or config.batch_size
        mask = compute_mask(
            adapter,
            endless_batches(forget_data, fisher_size, runtime.seed + 2, run.accelerator, shard=False),
            endless_batches(remain_data, fisher_size, runtime.seed + 3, run.accelerator, shard=False),
            config,
            run.accelerator,
            run.timer,
            run.held,
        )
    elif run.stepper.sharded:
        mask = shard_mask(run.params(), mask)
    run.mask = mask
    masked = MaskedUpdate(run.params(), mask, restore=config.mask_mode == "restore")
    forget_loss = make_forget_loss(run, forget_data, remain_data, config)

    return run, mask, masked, forget_loss, run.remain_part(config.remain_alpha, config.antithetic)


def sfron(adapter, forget_data, remain_data, config: SFRonConfig, runtime: Runtime = Runtime(), mask=None,
        monitor=None) -> dict:
    """Erase `forget_data` from `adapter.denoiser` in place; returns mask, sparsity, per-step losses and timings.

    `mask` (name -> bool tensor) skips the Fisher phase, e.g. to reuse a mask across runs.
    """
    run, mask, masked, forget_loss, remain_loss = prepare_sfron(
        adapter, forget_data, remain_data, config, runtime, mask, monitor)

    def iteration(step: int) -> dict:
        values = {}
        if step < config.forget_dense or step % config.forget_every == 0:  # fast: masked forget step
            alpha = alpha_schedule(config.forget_alpha, step, config.steps, config.alpha_decay)
            if config.alpha_placement == "clipped":
                values["forget"] = run.stepper.step(lambda: forget_loss(1.0), masked, scale_after_clip=alpha)
            else:
                values["forget"] = run.stepper.step(lambda: forget_loss(alpha), masked)
        values["remain"] = run.stepper.step(remain_loss)  # slow: unmasked remain step
        return values

    log = run.loop(["forget", "remain"], iteration, runtime, "SFR-on")
    return run.finish(log, mask)


def make_forget_loss(run, forget_data, remain_data, config: SFRonConfig):
    """forget_loss(alpha) -> (alpha * objective, value logged as the forget loss).

    The logged value is the forget batch's mean denoising loss, or for the pseudo objective its mean squared
    distance to the pseudo-class prediction.
    """
    adapter = run.adapter
    reduction = run.conventions["forget_reduction"]
    pseudo_class = remain_classes = None
    if config.forget_objective == "pseudo":
        pseudo_class, remain_classes = run.pseudo_targets(forget_data, remain_data, config.pseudo_class,
                                                          config.pseudo_random, config.pseudo_anchor)

    def forget_loss(alpha: float):
        images, labels = next(run.forget_batches)
        x0 = adapter.encode(images)
        if config.forget_objective == "pseudo":
            pseudo = pseudo_labels(labels, pseudo_class, remain_classes, config.pseudo_random)
            losses = pseudo_target_losses(adapter, x0, labels, pseudo, config.antithetic, reduction)
            return alpha * losses.mean(), losses.mean()
        losses = denoising_losses(adapter, x0, labels, antithetic=config.antithetic, reduction=reduction)
        if config.forget_objective == "adaptive":
            objective = adaptive_ascent_loss(losses, config.temperature)
        else:
            objective = gradient_ascent_loss(losses)
        return alpha * objective, losses.mean()

    return forget_loss
