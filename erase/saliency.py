"""Forget-remain balanced weight saliency (SFR-on, Huang et al. 2024, section 1a of ALGORITHMS.md)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from erase.errors import option
from erase.objectives import denoising_losses

FISHER_EPS = 1e-15


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """name -> parameter for every parameter that trains, names as in the unwrapped module's state dict."""
    module = getattr(module, "module", module)  # DistributedDataParallel keeps the model in .module
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def accumulation_dtype(device) -> torch.dtype:
    """float64 sums: squares of fp32 gradients are exact in it (no underflow below 1e-38), and the total is the same
    to the last fp32 bit whichever process added which batch. MPS has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


@contextlib.contextmanager
def local_model(adapter, accelerator):
    """The adapter predicting with the model unwrapped from DistributedDataParallel: per-batch gradients by
    `torch.autograd.grad` stay local (DDP's all-reduce hooks never fire and would wait for a .backward()); the
    statistics are reduced once at the end. Mixed-precision autocast stays on."""
    wrapped = adapter.denoiser
    if accelerator is not None:
        adapter.denoiser = accelerator.unwrap_model(wrapped)
    try:
        yield adapter
    finally:
        adapter.denoiser = wrapped


def fixed_draw(adapter, batches: Iterator):
    """(x0, conditions, noise, timesteps) of the next batch, drawn as `denoising_losses` would (noise, then
    timesteps). Every process draws every batch, so random states stay in step and a batch's draw does not depend
    on which process computes it."""
    images, conditions = next(batches)
    x0 = adapter.encode(images)
    noise, timesteps = adapter.draw(x0)
    return x0, conditions, noise, timesteps


def batch_gradients(loss_fn, values: list, fp16: bool) -> list[torch.Tensor]:
    """fp32 gradients of `loss_fn()`; under fp16 autocast the loss is scaled by 2^16 (halved and retried while the
    gradient overflows) and the gradient unscaled in fp32, as a GradScaler does, so small entries do not flush to
    zero in fp16."""
    scale = 2.0 ** 16 if fp16 else 1.0
    while True:
        loss = loss_fn()
        grads = torch.autograd.grad(loss * scale if fp16 else loss, values, allow_unused=True)
        grads = [torch.zeros_like(p, dtype=torch.float32) if g is None else g.float() for g, p in zip(grads, values)]
        if not fp16:
            return grads
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):  # one sync per batch, fp16 only
            torch._foreach_div_(grads, scale)
            return grads
        if scale <= 1.0:
            raise FloatingPointError(f"the Fisher gradient overflows fp16 even unscaled; use {option('--mixed-precision')} bf16 or no")
        scale /= 2.0


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
    DDPM code). `batches` yields (images, conditions).

    Under accelerate, `batches` must be the same stream on every process (endless_batches(shard=False)): process
    r computes the batches r, r + P, r + 2P, ... and the float64 sums are added across processes, so the result
    equals one process's over the same batches.
    """
    params = trainable_parameters(adapter.denoiser)
    values = list(params.values())
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    fp16 = accelerator is not None and accelerator.mixed_precision == "fp16"
    fisher = [torch.zeros_like(p, dtype=accumulation_dtype(p.device)) for p in values]  # (same shapes as params)
    show = accelerator is None or accelerator.is_main_process
    with local_model(adapter, accelerator):
        for index in tqdm(range(num_batches), desc=description, disable=not show, leave=False):
            x0, conditions, noise, timesteps = fixed_draw(adapter, batches)
            if index % world != rank:
                continue
            grads = batch_gradients(lambda: denoising_losses(adapter, x0, conditions, timesteps, noise, guidance_scale,
                                                             reduction=reduction).mean(), values, fp16)
            if max_grad_norm is not None:
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                torch._foreach_mul_(grads, (max_grad_norm / (norm + 1e-6)).clamp(max=1.0))
            torch._foreach_addcmul_(fisher, grads, grads)  # float64 += fp32 * fp32, exact products
    if world > 1:
        fisher = [accelerator.reduce(f, reduction="sum") for f in fisher]
    return {name: (f / num_batches).float() for name, f in zip(params, fisher)}


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
    """|sum over batches of grad L_forget| per entry: SalUn's weight saliency. Split across processes by batch like
    `fisher_diagonal` (the same `batches` on every process)."""
    params = trainable_parameters(adapter.denoiser)
    values = list(params.values())
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    fp16 = accelerator is not None and accelerator.mixed_precision == "fp16"
    total = [torch.zeros_like(p, dtype=accumulation_dtype(p.device)) for p in values]
    with local_model(adapter, accelerator):
        for index in tqdm(range(num_batches), desc="SalUn saliency", leave=False,
                          disable=accelerator is not None and not accelerator.is_main_process):
            x0, conditions, noise, timesteps = fixed_draw(adapter, batches)
            if index % world != rank:
                continue
            grads = batch_gradients(lambda: denoising_losses(adapter, x0, conditions, timesteps, noise).mean(),
                                    values, fp16)
            torch._foreach_add_(total, grads)
    if world > 1:
        total = [accelerator.reduce(t, reduction="sum") for t in total]
    return {name: t.abs().float() for name, t in zip(params, total)}


def top_fraction_mask(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """1 for the `fraction` of entries with the largest scores, one global threshold (ties may add a few)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"mask fraction must be in (0, 1], got {fraction}")
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = max(1, round(fraction * flat.numel()))
    threshold = torch.topk(flat, keep, sorted=False).values.min()
    return {name: s >= threshold for name, s in scores.items()}
