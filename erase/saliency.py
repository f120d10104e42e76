"""Forget-remain balanced weight saliency (SFR-on, Huang et al. 2024, docs/algorithms.md, section 1)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from erase.errors import UsageError, option
from erase.objectives import denoising_losses
from erase.sharding import is_sharded, local, squared_norm

FISHER_EPS = 1e-15


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """name -> parameter for every parameter that trains, names as in the unwrapped module's state dict."""
    module = getattr(module, "module", module)  # DistributedDataParallel keeps the model in .module
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


# The Fisher sums are float32, one accumulator per trained tensor (4 bytes per entry, as the weights): the float64
# sums used before doubled that and, at SD size (860M entries), held 6.9 GB per Fisher. Each batch adds g^2 with one
# fp32 rounding (at most half an ulp), so after N batches an entry is within N * 2^-24 (relative) of the exact sum,
# and of the old float64 result (tested). The batch gradients and their clip norm are the same as
# before: the norm is taken in float64 (float32 on MPS, which has none), so one process, DDP and FSDP shards agree
# on it to the last fp32 bit.
FISHER_RTOL_PER_BATCH = 2.0 ** -24


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


def batch_gradients(loss_fn, values: list, fp16: bool, sharded: bool = False) -> list[torch.Tensor]:
    """fp32 gradients of `loss_fn()`; under fp16 autocast the loss is scaled by 2^16 (halved and retried while the
    gradient overflows) and the gradient unscaled in fp32, as a GradScaler does, so small entries do not flush to
    zero in fp16.

    `sharded` (FSDP2): this process's shard of each gradient. FSDP's all-gathered weights are not the leaves autograd
    reaches, so the gradient comes from .backward() into .grad, reduce-scattered (averaged) across processes; every
    process computes the same batch, so the average is that batch's gradient."""
    scale = 2.0 ** 16 if fp16 else 1.0
    while True:
        loss = loss_fn()
        if sharded:
            for p in values:
                p.grad = None
            (loss * scale if fp16 else loss).backward()
            grads = [None if p.grad is None else local(p.grad) for p in values]
            for p in values:
                p.grad = None
            values_local = [local(p) for p in values]
        else:
            grads = torch.autograd.grad(loss * scale if fp16 else loss, values, allow_unused=True)
            values_local = values
        grads = [torch.zeros_like(p, dtype=torch.float32) if g is None else g.float()
                 for g, p in zip(grads, values_local)]
        if not fp16:
            return grads
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):  # one sync per batch, fp16 only
            torch._foreach_div_(grads, scale)
            return grads
        if scale <= 1.0:
            raise FloatingPointError(f"the Fisher gradient overflows fp16 even unscaled; use {option('--mixed-precision')} bf16 or no")
        scale /= 2.0


def partial_gradients(loss_fn, values: list, kept: list[bool], fp16: bool) -> tuple[list, torch.Tensor]:
    """fp32 gradients of the `kept` parameters of `loss_fn()` and the squared norm of the whole gradient, without
    the whole gradient ever existing: .backward() with a hook per parameter that adds its gradient's squared norm
    (float64) and frees it unless kept. fp16 loss scaling as in `batch_gradients`."""
    scale = 2.0 ** 16 if fp16 else 1.0
    keep = {id(p) for p, k in zip(values, kept) if k}
    while True:
        total = [torch.zeros((), dtype=torch.float64, device=values[0].device)]

        def hook(p: torch.Tensor) -> None:
            total[0] = total[0] + torch.linalg.vector_norm(p.grad, dtype=torch.float64).square()
            if id(p) not in keep:
                p.grad = None

        handles = [p.register_post_accumulate_grad_hook(hook) for p in values]
        try:
            for p in values:
                p.grad = None
            loss = loss_fn()
            (loss * scale if fp16 else loss).backward()
        finally:
            for handle in handles:
                handle.remove()
        grads = [torch.zeros_like(p, dtype=torch.float32) if p.grad is None else p.grad.float()
                 for p, k in zip(values, kept) if k]
        for p in values:
            p.grad = None
        if not fp16:
            return grads, total[0]
        if bool(torch.isfinite(total[0])):
            torch._foreach_div_(grads, scale)
            return grads, total[0] / scale ** 2
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
    only: set[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over `num_batches` batches of (grad_theta L(batch))^2.

    `only`: the Fisher of these parameters alone (a group of `--fisher-groups`, one process): the gradient of the
    rest is still computed, for the clip norm, but freed tensor by tensor as the backward pass makes it.

    L is the training loss (denoising squared error, per sample averaged or summed over pixels by `reduction`,
    averaged over the batch); with `guidance_scale` it is evaluated on the guided
    prediction, and `max_grad_norm` clips each batch's gradient before squaring (both as in the official
    DDPM code). `batches` yields (images, conditions).

    Under accelerate, `batches` must be the same stream on every process (endless_batches(shard=False)): process
    r computes the batches r, r + P, r + 2P, ... and the float32 sums are added across processes, so the result
    equals one process's over the same batches within the summation tolerance (FISHER_RTOL_PER_BATCH per batch).
    """
    params = trainable_parameters(adapter.denoiser)
    values = list(params.values())
    sharded = is_sharded(adapter.denoiser)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    if only is not None and (sharded or world > 1):
        raise UsageError(f"{option('--fisher-groups')} works on one process; under DDP or FSDP leave it at 1")
    if sharded:  # each process sums the squares of its shard over every batch: nothing to add up at the end
        rank, world = 0, 1
    fp16 = accelerator is not None and accelerator.mixed_precision == "fp16"
    kept = [only is None or name in only for name in params]
    names = [name for name, k in zip(params, kept) if k]
    fisher = [torch.zeros_like(local(p), dtype=torch.float32) for p, k in zip(values, kept) if k]  # (as params' shards)
    show = accelerator is None or accelerator.is_main_process
    with local_model(adapter, accelerator):
        for index in tqdm(range(num_batches), desc=description, disable=not show, leave=False):
            x0, conditions, noise, timesteps = fixed_draw(adapter, batches)
            if index % world != rank:
                continue
            loss_fn = lambda: denoising_losses(adapter, x0, conditions, timesteps, noise, guidance_scale,  # noqa: E731
                                               reduction=reduction).mean()
            if only is None:
                grads = batch_gradients(loss_fn, values, fp16, sharded)
                norm = squared_norm(grads, sharded).sqrt() if max_grad_norm is not None else None
            else:
                grads, total = partial_gradients(loss_fn, values, kept, fp16)
                norm = total.sqrt()
            if max_grad_norm is not None:
                torch._foreach_mul_(grads, (max_grad_norm / (norm + 1e-6)).clamp(max=1.0).float())
            torch._foreach_addcmul_(fisher, grads, grads)
            del grads
    if world > 1:
        for f in fisher:
            torch.distributed.all_reduce(f)  # in place: no second copy of the sums
    torch._foreach_div_(fisher, float(num_batches))
    return dict(zip(names, fisher))


def saliency_mask(
    forget_fisher: dict[str, torch.Tensor], remain_fisher: dict[str, torch.Tensor], gamma: float = 1.0,
    consume: bool = False,
) -> dict[str, torch.Tensor]:
    """mask = 1[(F_f + 1e-15) / (F_r + 1e-15) >= gamma], per parameter entry (bool).

    `consume`: empty both Fisher dicts tensor by tensor as the mask grows, so the peak is the two Fishers plus one
    tensor's mask, never two Fishers plus a whole mask plus temporaries."""
    if forget_fisher.keys() != remain_fisher.keys():
        raise ValueError("forget and remain Fisher must cover the same parameters")
    mask = {}
    for name in list(forget_fisher):
        forget, remain = (forget_fisher.pop(name), remain_fisher.pop(name)) if consume else \
            (forget_fisher[name], remain_fisher[name])
        if consume:
            mask[name] = forget.add_(FISHER_EPS).div_(remain.add_(FISHER_EPS)) >= gamma  # in place: no temporaries
        else:
            mask[name] = (forget + FISHER_EPS) / (remain + FISHER_EPS) >= gamma
        del forget, remain
    return mask


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
    sharded = is_sharded(adapter.denoiser)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    if sharded:
        rank, world = 0, 1
    fp16 = accelerator is not None and accelerator.mixed_precision == "fp16"
    total = [torch.zeros_like(local(p), dtype=torch.float32) for p in values]
    with local_model(adapter, accelerator):
        for index in tqdm(range(num_batches), desc="SalUn saliency", leave=False,
                          disable=accelerator is not None and not accelerator.is_main_process):
            x0, conditions, noise, timesteps = fixed_draw(adapter, batches)
            if index % world != rank:
                continue
            grads = batch_gradients(lambda: denoising_losses(adapter, x0, conditions, timesteps, noise).mean(),
                                    values, fp16, sharded)
            torch._foreach_add_(total, grads)
    if world > 1:
        for t in total:
            torch.distributed.all_reduce(t)
    torch._foreach_abs_(total)
    return dict(zip(params, total))


def top_fraction_mask(scores: dict[str, torch.Tensor], fraction: float, sharded: bool = False) -> dict[str, torch.Tensor]:
    """1 for the `fraction` of entries with the largest scores (>= 0), one global threshold (ties may add a few).

    The threshold is the k-th largest score, found by bisection on the float32 bit pattern (non-negative floats
    order as their bits do): 31 counting passes, no concatenated copy of every score and no top-k index tensor
    (at SD size those were 3.4 GB and 3.4 GB more). With `sharded`, each process holds a shard of every tensor
    (FSDP) and the counts are summed across processes: a distributed quantile, the same threshold as one process's.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"mask fraction must be in (0, 1], got {fraction}")
    tensors = [s.float() for s in scores.values()]
    device = tensors[0].device if tensors else "cpu"

    def count_at_least(threshold: torch.Tensor) -> int:
        count = sum((t >= threshold).sum() for t in tensors) + torch.zeros((), dtype=torch.long, device=device)
        if sharded:
            torch.distributed.all_reduce(count)
        return int(count)

    total = count_at_least(torch.tensor(0.0, device=device))  # every entry: scores are >= 0
    keep = max(1, round(fraction * total))
    low, high = 0, 0x7F800000  # bits of 0.0 (count = total >= keep) and +inf (count 0 < keep, scores finite)
    while high - low > 1:  # invariant: count(>= bits low) >= keep > count(>= bits high)
        middle = (low + high) // 2
        threshold = torch.tensor(middle, dtype=torch.int32).view(torch.float32).to(device)
        if count_at_least(threshold) >= keep:
            low = middle
        else:
            high = middle
    threshold = torch.tensor(low, dtype=torch.int32).view(torch.float32).to(device)  # the keep-th largest score
    return {name: s >= threshold for name, s in scores.items()}
