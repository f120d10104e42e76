"""FSDP2 (torch's `fully_shard`): each process holds a shard of every weight, gradient, optimizer state, Fisher and
mask. The Fisher, the SFR-on mask and the masked update are elementwise, so they run on the local shards; what
needs a whole-model number (a gradient norm, SalUn's threshold) sums per-shard parts across processes.

The same code runs whether accelerate applied FSDP2 (`accelerate launch --use_fsdp --fsdp_version 2`, GPUs) or
erase did (`--fully-shard`, e.g. on CPUs with gloo, where accelerate 1.15 ignores its FSDP plugin).
"""

from __future__ import annotations

import torch

from erase.errors import UsageError, option

# Methods whose math runs on shards. ESD and SA keep a frozen copy of the whole model beside the trained one, and
# Nabla-tau's threshold probes were not checked sharded: they run on one process or under DDP.
SHARDED_METHODS = ("sfron", "joint", "ga", "rl", "salun")


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself, or this process's shard of a sharded (DTensor) one."""
    return tensor._local_tensor if hasattr(tensor, "_local_tensor") else tensor


def is_sharded(module: torch.nn.Module) -> bool:
    module = getattr(module, "module", module)
    return any(hasattr(p, "_local_tensor") for p in module.parameters())


def check_method(method: str) -> None:
    if method not in SHARDED_METHODS:
        raise UsageError(f"{option('--method', 'method')} {method} does not run sharded (FSDP); use one of "
                         f"{', '.join(SHARDED_METHODS)}, or DDP (accelerate launch --multi_gpu)")


def shard_model(module: torch.nn.Module) -> torch.nn.Module:
    """`fully_shard` each block, innermost first, then the root: the blocks the model names in `_no_split_modules`
    (diffusers' own unit for device maps, as accelerate's FSDP2 auto-wrap uses), else each entry of its top-level
    ModuleLists (down, mid and up blocks, transformer blocks)."""
    from torch.distributed.fsdp import fully_shard

    names = set(getattr(module, "_no_split_modules", None) or ())
    if names:
        blocks = [m for m in module.modules() if type(m).__name__ in names and m is not module]
    else:
        blocks = [block for child in module.children() if isinstance(child, torch.nn.ModuleList) for block in child]
    for block in reversed(blocks):  # modules() lists parents before children; FSDP2 wants children first
        fully_shard(block)
    fully_shard(module)
    return module


def squared_norm(tensors: list[torch.Tensor], sharded: bool) -> torch.Tensor:
    """Sum of squares of every entry of `tensors` (local shards under FSDP, summed across processes), in float64
    (float32 on MPS): one process, DDP and FSDP shards then agree on a clip norm to the last fp32 bit."""
    dtype = torch.float32 if tensors and tensors[0].device.type == "mps" else torch.float64
    if not tensors:
        return torch.zeros((), dtype=dtype)
    total = torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype)).square().sum()
    if sharded:
        torch.distributed.all_reduce(total)
    return total


@torch.no_grad()
def clip_gradients(params: list[torch.nn.Parameter], max_norm: float, sharded: bool) -> torch.Tensor:
    """torch's clip_grad_norm_ (scale by max_norm / (norm + 1e-6) where that is below 1) over local gradient
    shards, the norm summed across processes."""
    grads = [local(p.grad) for p in params if p.grad is not None]
    norm = squared_norm(grads, sharded).sqrt()
    torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0).to(grads[0].dtype))
    return norm


def full_mask(params: dict[str, torch.nn.Parameter], mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every process's mask shards joined into whole bool tensors (on every process, as all_gather gives them)."""
    from torch.distributed.tensor import DTensor

    whole = {}
    for name, p in params.items():
        shard = DTensor.from_local(mask[name].to(torch.uint8), p.device_mesh, p.placements, shape=p.shape,
                                   stride=p.stride())  # uint8: gloo gathers no bool
        whole[name] = shard.full_tensor().bool()
    return whole


def shard_mask(params: dict[str, torch.nn.Parameter], mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This process's shard of each whole mask tensor (a --mask file under FSDP), laid out as its parameter's."""
    from torch.distributed.tensor import distribute_tensor

    return {name: distribute_tensor(mask[name].to(p.device, torch.uint8), p.device_mesh, p.placements).to_local().bool()
            if name in mask else mask[name] for name, p in params.items()}


def unsharded_module(module: torch.nn.Module) -> torch.nn.Module:
    """A plain copy of a sharded diffusers model with its whole weights (gathered on every process), the trained
    flags and mode kept: what save_pretrained and sampling take."""
    from torch.distributed.fsdp import FSDPModule

    original_class = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))
    state = {name: t.full_tensor() if hasattr(t, "full_tensor") else t for name, t in module.state_dict().items()}
    with torch.device("meta"):
        plain = original_class.from_config(module.config)
    plain.load_state_dict(state, assign=True, strict=True)
    left = [name for name, t in (*plain.named_parameters(), *plain.named_buffers()) if t.is_meta]
    if left:  # a buffer the state dict does not carry: build the model normally instead
        plain = original_class.from_config(module.config)
        plain.load_state_dict(state, strict=True)
    trained = {name for name, p in module.named_parameters() if p.requires_grad}
    for name, p in plain.named_parameters():
        p.requires_grad_(name in trained)
    return plain.train(module.training)
