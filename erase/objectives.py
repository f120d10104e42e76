"""Per-sample denoising losses and the forget objectives built on them (docs/algorithms.md, sections 1 and 3).

Convention: a per-sample loss is the squared error over the sample's elements, shape (B,), reduced by `reduction`:
"mean" (torch's MSELoss, most code) or "sum" (the official SFR-on DDPM code; SalUn's remain term). A sum is the
mean times D = C x H x W, so a constant tuned under one reduction means something D times different under the
other; every method's config names the reduction its constants belong to (docs/algorithms.md, section 1).
"""

from __future__ import annotations

import difflib
from typing import Sequence

import torch

from erase.errors import UsageError

REDUCTIONS = ("mean", "sum")


def reduce_pixels(squared_error: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B, ...) squared errors -> (B,) per-sample losses, averaged or summed over each sample's elements."""
    flat = squared_error.flatten(1)
    if reduction == "mean":
        return flat.mean(1)
    if reduction == "sum":
        return flat.sum(1)
    raise ValueError(f"loss reduction must be one of {REDUCTIONS}, got {reduction!r}")


def require_conditional(adapter, what: str, zero_term: str, instead: str) -> None:
    """Refuse `what` on an unconditional model: it ignores the condition, so `zero_term`, a difference between two
    conditions' predictions, is exactly 0 and the run would train nothing away (a silent no-op)."""
    if not adapter.conditional:
        raise UsageError(f"{what} cannot erase anything from this unconditional {adapter.backbone} model: it ignores "
                         f"the condition, so {zero_term} is exactly 0; {instead}")


def drop_conditions(adapter, condition, probability: float):
    """Replace each condition by the null condition with `probability` (classifier-free guidance training, Ho &
    Salimans 2022); unconditional models and probability 0 return `condition` unchanged."""
    if probability <= 0 or not adapter.conditional or not isinstance(condition, torch.Tensor):
        return condition
    dropped = torch.rand(condition.shape[0], device=condition.device) < probability
    return torch.where(dropped, adapter.null_condition(condition.shape[0]).to(condition.device), condition)


def denoising_losses(
    adapter,
    x0: torch.Tensor,
    condition,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    guidance_scale: float | None = None,
    antithetic: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """l_i = || target - output_theta(x_t, t, c_i) ||^2 averaged or summed over pixels (`reduction`), (B,), in the
    model's own prediction space (the adapter's `prediction_and_target`: eps, v, x0 or flow velocity); with
    `guidance_scale`, on the guided output. A classifier adapter (`generative` False) has no noise: l_i is its
    per-sample cross-entropy of label c_i, and timesteps, noise, guidance and reduction do not apply."""
    if not getattr(adapter, "generative", True):
        return adapter.losses(x0, condition)
    output, target = adapter.prediction_and_target(x0, condition, noise, timesteps, guidance_scale, antithetic)
    return reduce_pixels((output.float() - target.float()).pow(2), reduction)


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


def pseudo_target_losses(adapter, x0: torch.Tensor, condition, pseudo_condition, antithetic: bool = False,
                         reduction: str = "mean") -> torch.Tensor:
    """Per-sample MSE between output_theta(x_t, t, c_forget) and the detached output_theta(x_t, t, c_pseudo), in
    the model's prediction space.

    The random-label / replacement-prompt forget loss (SalUn's, and the SFR-on Stable Diffusion script's). On a
    classifier: the cross-entropy of the pseudo label (SalUn's random-label loss for classifiers).
    """
    if not getattr(adapter, "generative", True):
        return adapter.losses(x0, pseudo_condition)
    noise, timesteps = adapter.draw(x0, antithetic)
    x_t = adapter.add_noise(x0, noise, timesteps)
    with torch.no_grad():
        target = adapter.model_output(x_t, timesteps, pseudo_condition).float()
    return reduce_pixels((adapter.model_output(x_t, timesteps, condition).float() - target).pow(2), reduction)


def default_pseudo_class(forget_classes, remain_classes, given: int | None = None) -> int:
    """`given`, else SalUn's DDPM choice: forget class k maps to (k + 1) mod n, the next remaining class after the
    first forget class."""
    if given is not None:
        return given
    remain = sorted(int(c) for c in remain_classes)
    first = min(int(c) for c in forget_classes)
    return next((c for c in remain if c > first), remain[0])


def nearest_prompts(prompts: Sequence[str], forget_ids: Sequence[int], remain_ids: Sequence[int]) -> torch.Tensor:
    """A table over prompt ids mapping each forget prompt to the remain prompt whose words match it best
    (difflib's ratio on word lists; the first such remain prompt on ties): with forget and remain prompts written
    from the same templates, 'a seven in neon style' maps to 'a seven in sepia style', the concept swapped and the
    rest of the prompt kept (the anchor prompts of concept ablation, chosen without a list)."""
    table = torch.arange(len(prompts))
    candidates = [(i, prompts[i].lower().split()) for i in remain_ids]
    for i in forget_ids:
        words = prompts[i].lower().split()
        ratios = [difflib.SequenceMatcher(None, words, other, autojunk=False).ratio() for _, other in candidates]
        table[i] = candidates[max(range(len(ratios)), key=ratios.__getitem__)][0]
    return table


def pseudo_labels(labels: torch.Tensor, pseudo_class: int | torch.Tensor, remain_classes: torch.Tensor,
                  per_sample_random: bool = False) -> torch.Tensor:
    """The pseudo condition per sample: `pseudo_class` for all (SalUn's DDPM code), `pseudo_class[label]` where it
    is a table (`nearest_prompts`), or with `per_sample_random` a random remaining class each. A random class per
    sample is minimised by a network that ignores its label, which erases more than asked."""
    if per_sample_random:
        pick = torch.randint(0, len(remain_classes), labels.shape, device=labels.device)
        return remain_classes[pick]
    if isinstance(pseudo_class, torch.Tensor):
        return pseudo_class[labels]
    return torch.full_like(labels, pseudo_class)
