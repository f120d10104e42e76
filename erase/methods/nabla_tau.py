"""Nabla-tau (Trippa et al. 2024, arXiv 2403.14339): adaptive ReLU-gap gradient ascent, one step per iteration.

    L = alpha * ReLU(tau - mean_f l)^2 + (1 - alpha) * mean_r l                (--gap absolute, the authors' form)
    L = alpha * ReLU(1 - mean_f l / tau)^2 + (1 - alpha) * mean_r l          (--gap relative, the default here)
Ascent on the forget batch is proportional to the gap to tau and switches off once the forget loss reaches tau.
The authors tuned the absolute gap on classifiers, whose cross-entropy gaps are O(1); a pixel-mean denoising loss is
O(0.01), so the absolute gap's gradient 2 alpha (tau - l) is ~100x weaker than the remain term's and nothing is erased
(FA 97% on the shipped digit model). The relative gap measures the same distance in units of tau, independent of the
loss scale, image size and reduction.
tau = by default a fixed multiple (--tau-factor) of the starting forget loss (`relative`); the current model's mean
loss on a reference, refreshed every `tau_every` steps without gradient: the forget images under the null condition
or held-out data (`null`, `heldout`: the authors' rule for random forget sets); or, for class removal (`class`), the
starting model's loss under the forget label on images of the other classes.
alpha_0 = 5/3 p, p = |D_f| / (|D_f| + |D_r|), decaying linearly to 0.
--direction pseudo (the cfg_unet preset): the forget term moves the forget class's prediction toward another class's,
each sample weighted by the ascent's own slope -dG/dl (--gap-over sample), so it still stops at tau; plain ascent on
a denoiser has no direction and erased digit 7 on seed 1 but not on seed 0. docs/nabla-tau.md has the measurements and the other variants
(--gap-over sample|timestep, --mask-fraction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from erase.config import acts_when, documented
from erase.data import ImageDataset
from erase.engine import MaskedUpdate, Runtime, endless_batches, remain_label_dropout_field, start_run
from erase.errors import OptionError, option
from erase.eval.losses import fixed_draw_loss, fixed_draw_losses
from erase.memory import release_freed_memory
from erase.objectives import (denoising_losses, pseudo_labels, reduce_pixels,
                              require_conditional)
from erase.saliency import gradient_magnitude, top_fraction_mask
from erase.sharding import shard_mask


PSEUDO_ONLY = acts_when("direction", "pseudo", lambda c: c.direction == "pseudo")


@documented
@dataclass
class NablaTauConfig:
    steps: int | None = field(default=150, metadata={"range": "[1, inf)", "help": "iterations (ours; the authors count epochs of classifier training); 'none' = --remain-epochs passes over the remain set"})
    batch_size: int = field(default=128, metadata={"range": "[1, inf)", "help": "forget and remain batch size"})
    lr: float = field(default=1e-4, metadata={"range": "(0, inf)", "help": "AdamW learning rate (authors: 1e-3 for classifiers; 1e-4 suits diffusion)"})
    lr_end_factor: float = field(default=1.0, metadata={"range": "(0, 1]", "help": "the learning rate decays linearly to this x --lr by the last step (authors, classifiers: 0.1; 1 = constant)"})
    remain_epochs: float = field(
        default=3.0, metadata={**acts_when("steps", "none", lambda c: c.steps is None), "range": "(0, inf)",
                               "help": "with --steps none: steps = ceil(this x |D_r| / batch size), "
                                                 "passes over the remain set (the authors' classifier rule: 3)"})
    tau_source: str = field(
        default="relative", metadata={"help": "tau from: null (forget images, null condition), heldout (images the model "
                                           "never trained on: a classifier's validation split, else 10%% of the remain "
                                           "set kept out of training), class (class removal: the starting model's "
                                           "loss on images of the other classes under the forget label, held out "
                                           "where the data has a held-out split, fixed: how a model that never "
                                           "learned the class scores it; refreshed, it would chase the ascent), value "
                                           "(--tau-value), or relative (--tau-factor x the forget loss under the "
                                           "forget labels at step 0, fixed); auto: class when the forget set is whole "
                                           "classes, else heldout",
                                  "choices": ("null", "heldout", "class", "auto", "value", "relative")}
    )
    tau_value: float | None = field(default=None, metadata={
        **acts_when("tau_source", "value", lambda c: c.tau_source == "value"), "range": "(0, inf)",
        "help": "fixed tau for --tau-source value"})
    tau_factor: float = field(
        default=4.0, metadata={**acts_when("tau_source", "relative", lambda c: c.tau_source == "relative"),
                               "range": "(1, inf)", "help": "for --tau-source relative: tau = this x the starting forget loss (on the "
                                       "shipped digit model a model retrained without the digit has 1.6-2.4x the "
                                       "base's loss on it, yet raising digit 5's loss to 2x left FA at 65%%, 4x at "
                                       "25%%; the null source, 1.15x, at 95%%)"}
    )
    gap: str = field(
        default="relative", metadata={"help": "forget term ReLU(1 - l/tau)^2 (relative: scale-free) or ReLU(tau - l)^2 "
                                              "(absolute: the authors' classifier form, far too weak on pixel-mean "
                                              "denoising losses)", "choices": ("relative", "absolute")}
    )
    tau_every: int = field(default=10, metadata={
        **acts_when("tau_source", "null, heldout or auto (the sources refreshed)",
                    lambda c: c.tau_source in ("null", "heldout", "auto")),
        "range": "[1, inf)", "help": "steps between tau refreshes (the others are fixed)"})
    tau_samples: int = field(default=256, metadata={
        **acts_when("tau_source", "other than value", lambda c: c.tau_source != "value"), "range": "[1, inf)",
        "help": "(image, noise, timestep) draws per tau estimate"})
    alpha: float | None = field(default=None, metadata={"range": "(0, 1]", "help": "alpha_0 (default: 5/3 |D_f| / (|D_f| + |D_r|), the authors' rule)"})
    max_grad_norm: float | None = field(default=1.0, metadata={"range": "(0, inf)", "help": "gradient clipping norm"})
    remain_label_dropout: float | None = remain_label_dropout_field()
    antithetic: bool = field(default=True, metadata={"help": "antithetic timesteps (t and T-1-t in one batch)"})
    gap_over: str = field(
        default="batch", metadata={"help": "the gap on the forget batch's mean loss (batch: the authors' form); on "
                                           "each sample's loss, averaged (sample: every sample's ascent stops at tau "
                                           "on its own); or per sample against tau of its timestep (timestep: tau(t) "
                                           "= --tau-factor x the starting model's forget loss in t's band of "
                                           "--timestep-bands equal bands, with --tau-source relative; diffusion "
                                           "models only)", "choices": ("batch", "sample", "timestep")}
    )
    direction: str = field(
        default="ascent", metadata={"help": "how the forget term moves the prediction: ascent on the forget loss (the "
                                            "authors') or pseudo: toward the detached prediction for another class "
                                            "(--pseudo-class) weighted by the ascent's own strength, the gap's slope "
                                            "(each sample's with --gap-over sample, else the batch mean's), so it "
                                            "still stops at tau (class-conditional diffusion models)",
                                    "choices": ("ascent", "pseudo")}
    )
    pseudo_class: int | None = field(default=None, metadata={**PSEUDO_ONLY, "range": "[0, inf)", "help": "for --direction pseudo: the "
                                     "class the forget class is moved toward (default: the next remaining class, "
                                     "SalUn's DDPM choice)"})
    pseudo_random: bool = field(default=False, metadata={**PSEUDO_ONLY, "help": "for --direction pseudo: a random remaining class per sample"})
    timestep_bands: int = field(default=10, metadata={
        **acts_when("gap_over", "timestep", lambda c: c.gap_over == "timestep"), "range": "[1, inf)",
        "help": "timestep bands for --gap-over timestep"})
    mask_fraction: float | None = field(
        default=None, metadata={"range": "(0, 1]", "help": "confine every update to this share of entries with the "
                                                    "largest forget-loss gradient magnitude (SalUn's saliency rule); "
                                                    "none = all weights (the authors' form)"}
    )
    saliency_batches: int = field(default=20, metadata={
        **acts_when("mask_fraction", "set", lambda c: c.mask_fraction is not None),
        "range": "[1, inf)", "help": "forget batches whose gradient sets the mask"})


def nabla_tau_forget_term(losses: torch.Tensor, tau, gap: str = "relative", over: str = "batch") -> torch.Tensor:
    """ReLU(tau - l)^2 (absolute) or ReLU(1 - l / tau)^2 (relative) on the batch's mean loss l (over "batch") or on
    each sample's loss, averaged (over "sample"; `tau` may then hold one value per sample): zero, with zero gradient,
    once the loss (each sample's) reaches tau."""
    l = losses.mean() if over == "batch" else losses
    gaps = torch.relu(1.0 - l / tau) if gap == "relative" else torch.relu(tau - l)
    return gaps.pow(2).mean()


# Named settings per backbone (erase/methods/__init__.py PRESETS); cfg_unet: the directed forget term toward a random other
# class, each sample weighed by its own gap. Why these values: docs/presets.md.
NABLA_TAU_PRESETS = {
    "cfg_unet": {"direction": "pseudo", "pseudo_random": True, "gap_over": "sample", "lr": 3e-4, "steps": 150,
                 "batch_size": 64},
}


def gap_slope(losses: torch.Tensor, tau: float, gap: str = "relative") -> torch.Tensor:
    """-d/dl of each sample's gap term (ReLU(1 - l/tau)^2 or ReLU(tau - l)^2): the ascent's per-sample strength,
    proportional to the gap and exactly 0 once l reaches tau."""
    if gap == "relative":
        return 2.0 * torch.relu(1.0 - losses / tau) / tau
    return 2.0 * torch.relu(tau - losses)


def band_of(timesteps: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Index of each timestep's band; `edges` holds the bands' inner boundaries (bands - 1 values, ascending)."""
    return torch.bucketize(timesteps.float(), edges.float(), right=True)


def timestep_band_losses(adapter, dataset, num_samples: int, bands: int, seed: int):
    """(inner band edges, mean loss per band) of `adapter` on `num_samples` fixed draws (eval.losses
    fixed_draw_losses): `bands` equal-width bands between the smallest and largest timestep drawn. A band no draw
    fell in takes the mean of all draws."""
    losses, drawn = fixed_draw_losses(adapter, dataset, num_samples, seed)
    drawn = drawn.float()
    edges = torch.linspace(float(drawn.min()), float(drawn.max()), bands + 1)[1:-1]
    which = band_of(drawn, edges)
    means = torch.stack([losses[which == b].mean() if (which == b).any() else losses.mean() for b in range(bands)])
    return edges, means


def absent_class_reference(forget_data, remain_data) -> ImageDataset:
    """Class removal's tau reference: images of the remaining classes (the held-out split where the data has one,
    else the remain set) labelled with the forget class(es), in turn. A model that never learned class c treats an
    image of c like any image that is not c, so its loss under label c is what the current model gives label c on
    images that are not c."""
    forget_classes = sorted(set(forget_data.labels.tolist()))
    source = remain_data.heldout if remain_data.heldout is not None else remain_data
    if set(forget_classes) & set(remain_data.labels.tolist()):
        raise OptionError(f"{option('--tau-source')} class is for class removal: the remain set also holds "
                          f"class(es) {sorted(set(forget_classes) & set(remain_data.labels.tolist()))}; use "
                          "heldout for a random forget set")
    others = source.subset(~torch.isin(source.labels, torch.tensor(forget_classes)), "other classes")
    labels = torch.tensor(forget_classes)[torch.arange(len(others)) % len(forget_classes)]
    return ImageDataset(others.images, labels, others.class_names, "other classes, forget label")


def nabla_tau(adapter, forget_data, remain_data, config: NablaTauConfig, runtime: Runtime = Runtime(), mask=None,
        monitor=None) -> dict:
    if config.gap not in ("relative", "absolute"):
        raise OptionError(f"{option('--gap')} must be relative or absolute, got {config.gap!r}")
    if config.tau_source == "value" and config.tau_value is None:
        raise OptionError(f"{option('--tau-source')} value needs {option('--tau-value')}")
    if config.gap_over not in ("batch", "sample", "timestep"):
        raise OptionError(f"{option('--gap-over')} must be batch, sample or timestep, got {config.gap_over!r}")
    if config.direction == "pseudo":
        if not getattr(adapter, "generative", True):
            raise OptionError(f"{option('--direction')} pseudo moves a denoiser's prediction; on a classifier, ascent "
                              "on the cross-entropy already moves it toward the other classes: use ascent")
        require_conditional(adapter, "--direction pseudo", "its forget term, the squared gap eps(x_t, c_forget) - "
                            "eps(x_t, c_pseudo),", "use --direction ascent")
        if config.gap_over == "timestep":
            raise OptionError(f"{option('--direction')} pseudo takes {option('--gap-over')} batch or sample")
    elif config.pseudo_class is not None:
        raise OptionError(f"{option('--pseudo-class')} is the target of {option('--direction')} pseudo; the ascent "
                          "has none")
    if config.gap_over == "timestep" and (config.tau_source != "relative" or not getattr(adapter, "generative", True)):
        raise OptionError(f"{option('--gap-over')} timestep needs {option('--tau-source')} relative and a diffusion "
                          "model (a classifier has no timesteps)")
    if config.tau_source == "auto":  # class removal when no forget class is left in the remain set
        whole = not set(forget_data.labels.tolist()) & set(remain_data.labels.tolist())
        config = replace(config, tau_source="class" if whole else "heldout")
    if config.tau_source == "null" and not adapter.conditional:
        raise OptionError(f"{option('--tau-source')} null needs a conditional model; use heldout or value")
    reference = None
    if config.tau_source == "relative":
        reference = forget_data
    elif config.tau_source == "null":
        reference = ImageDataset(forget_data.images, adapter.null_condition(len(forget_data)).cpu(), [], "forget, null")
    elif config.tau_source == "class":
        reference = absent_class_reference(forget_data, remain_data)
    elif config.tau_source == "heldout" and remain_data.heldout is not None:
        reference = remain_data.heldout  # data the model never trained on (a classifier's validation split)
    elif config.tau_source == "heldout":
        order = torch.randperm(len(remain_data), generator=torch.Generator().manual_seed(runtime.seed))
        cut = max(1, len(remain_data) // 10)
        reference, remain_data = remain_data.subset(order[:cut], "heldout"), remain_data.subset(order[cut:], "remain")
    p = len(forget_data) / (len(forget_data) + len(remain_data))
    alpha0 = config.alpha if config.alpha is not None else 5.0 / 3.0 * p
    steps = config.steps
    if steps is None:
        steps = math.ceil(config.remain_epochs * len(remain_data) / min(config.batch_size, len(remain_data)))
    run = start_run(adapter, forget_data, remain_data, runtime, monitor=monitor, steps=steps, lr=config.lr,
                    batch_size=config.batch_size, max_grad_norm=config.max_grad_norm, optimizer="adamw",
                    remain_label_dropout=config.remain_label_dropout)
    if mask is None and config.mask_fraction is not None:
        with run.timer.phase("mask"):
            batches = endless_batches(forget_data, config.batch_size, runtime.seed + 2, run.accelerator, shard=False)
            magnitude = gradient_magnitude(adapter, batches, config.saliency_batches, run.accelerator)
            mask = top_fraction_mask(magnitude, config.mask_fraction, sharded=run.stepper.sharded)
            del magnitude
            release_freed_memory()
    elif mask is not None and run.stepper.sharded:
        mask = shard_mask(run.params(), mask)
    run.mask = mask
    masked = MaskedUpdate(run.params(), mask) if mask is not None else None
    taus: list[dict] = []

    bands = None  # --gap-over timestep: (band edges, tau per band)
    pseudo_class = remain_classes = None
    if config.direction == "pseudo":
        pseudo_class, remain_classes = run.pseudo_targets(forget_data, remain_data, config.pseudo_class,
                                                          config.pseudo_random)

    def refresh_tau(step: int) -> float:
        nonlocal bands
        if config.gap_over == "timestep":
            edges, means = timestep_band_losses(adapter, reference, max(config.tau_samples, 64 * config.timestep_bands),
                                                config.timestep_bands, runtime.seed)
            bands = (edges, config.tau_factor * means)
            taus.append({"step": step, "tau": float(bands[1].mean()), "band_edges": edges.tolist(),
                         "band_tau": bands[1].tolist()})
            return float(bands[1].mean())
        if config.tau_source == "value":
            value = float(config.tau_value)
        else:
            with torch.no_grad():
                value = fixed_draw_loss(adapter, reference, config.tau_samples, seed=runtime.seed)
            if config.tau_source == "relative":
                value *= config.tau_factor
        taus.append({"step": step, "tau": value})
        return value

    state = {"tau": refresh_tau(0)}
    run.keep("tau", state)  # a resumed run continues with the tau refreshed last, and its record
    run.keep("taus", taus)

    def iteration(step: int) -> dict:
        if step > 0 and step % config.tau_every == 0 and config.tau_source in ("null", "heldout"):  # the others: fixed
            state["tau"] = refresh_tau(step)
        alpha = alpha0 * (1.0 - step / steps)
        if config.lr_end_factor != 1.0:
            for group in run.optimizer.param_groups:
                group["lr"] = config.lr * (1.0 - (1.0 - config.lr_end_factor) * step / steps)

        def forget_draw():
            images, labels = next(run.forget_batches)
            x0 = adapter.encode(images)
            return (x0, labels, *adapter.draw(x0, config.antithetic))

        def forget_part():
            if config.direction == "pseudo":
                x0, labels, noise, timesteps = forget_draw()
                x_t = adapter.add_noise(x0, noise, timesteps)
                with torch.no_grad():
                    toward = adapter.model_output(x_t, timesteps, pseudo_labels(
                        labels, pseudo_class, remain_classes, config.pseudo_random)).float()
                output = adapter.model_output(x_t, timesteps, labels).float()
                reduction = run.conventions["forget_reduction"]
                losses = reduce_pixels((output - adapter.target(x0, noise, timesteps).float()).pow(2), reduction)
                gaps = losses.detach() if config.gap_over == "sample" else losses.detach().mean()
                slope = gap_slope(gaps, state["tau"], config.gap)  # per sample, or the batch mean's for all
                moved = reduce_pixels((output - toward).pow(2), reduction)
                return alpha * (slope * moved).mean(), losses.mean()
            if config.gap_over == "timestep":
                x0, labels, noise, timesteps = forget_draw()
                losses = denoising_losses(adapter, x0, labels, timesteps, noise,
                                          reduction=run.conventions["forget_reduction"])
                edges, band_tau = bands
                tau = band_tau.to(losses.device)[band_of(timesteps, edges.to(timesteps.device))]
                return alpha * nabla_tau_forget_term(losses, tau, config.gap, "sample"), losses.mean()
            losses, _ = run.next_losses("forget", config.antithetic)
            return alpha * nabla_tau_forget_term(losses, state["tau"], config.gap, config.gap_over), losses.mean()

        remain_part = run.remain_part(1.0 - alpha, config.antithetic)
        forget, remain = run.stepper.step_parts([(forget_part, masked), (remain_part, masked)], restrict=masked)
        return {"forget": forget, "remain": remain}

    log = run.loop(["forget", "remain"], iteration, runtime, "Nabla-tau")
    return run.finish(log, mask, record={"alpha0": alpha0, "p": p, "steps": steps, "tau_source": config.tau_source,
                                         "gap": config.gap, "gap_over": config.gap_over, "direction": config.direction,
                                         # the pseudo target as used: None where the ascent or a random class
                                         "pseudo_class": run.conventions.get("pseudo_class"),
                                         "pseudo_random": config.pseudo_random if config.direction == "pseudo" else None,
                                         "tau": taus})
