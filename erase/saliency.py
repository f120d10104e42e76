"""Forget-remain balanced weight saliency (SFR-on, Huang et al. 2024, section 1a of ALGORITHMS.md)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from erase.objectives import denoising_losses

FISHER_EPS = 1e-15


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """name -> parameter for every parameter that trains, names as in the unwrapped module's state dict."""
    module = getattr(module, "module", module)  # DistributedDataParallel keeps the model in .module
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def fisher_diagonal(
    adapter,
    batches: Iterator,
    num_batches: int,
    guidance_scale: float | None = None,
    max_grad_norm: float | None = None,
    accelerator=None,
    description: str = "Fisher",
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over `num_batches` batches of (grad_theta L(batch))^2.

    L is the training loss (denoising squared error, per sample averaged or summed over pixels by `reduction`,
    averaged over the batch); with `guidance_scale` it is evaluated on the guided
    prediction, and `max_grad_norm` clips each batch's gradient before squaring (both as in the official
    DDPM code). `batches` yields (images, conditions). Averaged over processes under accelerate.
    """
    params = trainable_parameters(adapter.denoiser)
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params.values()]  # (same shapes as params)
    values = list(params.values())
    show = accelerator is None or accelerator.is_local_main_process
    for _ in tqdm(range(num_batches), desc=description, disable=not show, leave=False):
        images, conditions = next(batches)
        loss = denoising_losses(adapter, adapter.encode(images), conditions, guidance_scale=guidance_scale,
                                reduction=reduction).mean()
        grads = torch.autograd.grad(loss, values, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g.float() for g, p in zip(grads, values)]
        if max_grad_norm is not None:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_mul_(grads, (max_grad_norm / (norm + 1e-6)).clamp(max=1.0))
        torch._foreach_addcmul_(fisher, grads, grads)
    torch._foreach_div_(fisher, float(num_batches))
    if accelerator is not None and accelerator.num_processes > 1:
        fisher = [accelerator.reduce(f, reduction="mean") for f in fisher]
    return dict(zip(params, fisher))


def saliency_mask(
    forget_fisher: dict[str, torch.Tensor], remain_fisher: dict[str, torch.Tensor], gamma: float = 1.0
) -> dict[str, torch.Tensor]:
    """mask = 1[(F_f + 1e-15) / (F_r + 1e-15) >= gamma], per parameter entry (bool)."""
    if forget_fisher.keys() != remain_fisher.keys():
        raise ValueError("forget and remain Fisher must cover the same parameters")
    return {
        name: (forget_fisher[name] + FISHER_EPS) / (remain_fisher[name] + FISHER_EPS) >= gamma for name in forget_fisher
    }


def _module_of(parameter_name: str) -> str:
    return parameter_name.rsplit(".", 1)[0] if "." in parameter_name else parameter_name


def mask_sparsity(mask: dict[str, torch.Tensor]) -> dict:
    """Share of entries the forget step may NOT change (mask 0), overall and per module."""
    per_module_zeros: dict[str, int] = defaultdict(int)
    per_module_total: dict[str, int] = defaultdict(int)
    for name, m in mask.items():
        per_module_zeros[_module_of(name)] += int(m.numel() - m.sum())
        per_module_total[_module_of(name)] += m.numel()
    zeros, total = sum(per_module_zeros.values()), sum(per_module_total.values())
    return {
        "overall": zeros / max(total, 1),
        "salient_entries": total - zeros,
        "total_entries": total,
        "per_module": {name: per_module_zeros[name] / per_module_total[name] for name in per_module_total},
    }


def save_mask(mask: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Bool tensors in safetensors, keyed by parameter name."""
    save_file({name: m.detach().to("cpu", torch.bool).contiguous() for name, m in mask.items()}, str(path), metadata)


def load_mask(path: str | Path) -> dict[str, torch.Tensor]:
    return {name: m.bool() for name, m in load_file(str(path)).items()}


def cycle(loader: Iterable) -> Iterator:
    """Endless iteration over a DataLoader (reshuffled each pass)."""
    while True:
        yield from loader


def gradient_magnitude(adapter, batches: Iterator, num_batches: int, accelerator=None) -> dict[str, torch.Tensor]:
    """|mean over batches of grad L_forget| per entry: SalUn's weight saliency."""
    params = trainable_parameters(adapter.denoiser)
    values = list(params.values())
    total = [torch.zeros_like(p, dtype=torch.float32) for p in values]
    for _ in tqdm(range(num_batches), desc="SalUn saliency", leave=False,
                  disable=accelerator is not None and not accelerator.is_local_main_process):
        images, conditions = next(batches)
        loss = denoising_losses(adapter, adapter.encode(images), conditions).mean()
        grads = torch.autograd.grad(loss, values, allow_unused=True)
        torch._foreach_add_(total, [torch.zeros_like(t) if g is None else g.float() for g, t in zip(grads, total)])
    if accelerator is not None and accelerator.num_processes > 1:
        total = [accelerator.reduce(t, reduction="sum") for t in total]
    return {name: t.abs() for name, t in zip(params, total)}


def top_fraction_mask(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """1 for the `fraction` of entries with the largest scores, one global threshold (ties may add a few)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"mask fraction must be in (0, 1], got {fraction}")
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = max(1, round(fraction * flat.numel()))
    threshold = torch.topk(flat, keep, sorted=False).values.min()
    return {name: s >= threshold for name, s in scores.items()}
