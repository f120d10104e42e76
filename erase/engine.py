"""Loop pieces every method shares: the accelerator, endless seeded batches, loss logs, masked steps."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from erase.errors import NonFiniteLossError
from erase.saliency import cycle, trainable_parameters


@dataclass
class Runtime:
    """Where and how a run executes; the same for every method."""

    seed: int = field(default=0, metadata={"help": "seed for weights init, data order, noise and timesteps"})
    mixed_precision: str = field(
        default="no", metadata={"help": "autocast precision: no (fp32), fp16 (GPU) or bf16 (recent GPUs and CPUs); weights stay fp32", "choices": ("no", "fp16", "bf16")}
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-batches accumulated per optimizer step"})
    cpu: bool = field(default=False, metadata={"help": "run on the CPU even when a GPU is present"})
    log_every: int = field(
        default=10, metadata={"help": "steps between progress-bar loss updates and NaN checks (each is a host sync)"}
    )


def make_accelerator(runtime: Runtime) -> Accelerator:
    accelerator = Accelerator(mixed_precision=runtime.mixed_precision, cpu=runtime.cpu)
    set_seed(runtime.seed)
    return accelerator


def endless_batches(dataset, batch_size: int, seed: int, accelerator: Accelerator) -> Iterator:
    """Shuffled (images, labels) batches forever, sharded across processes, on the accelerator's device."""
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, drop_last=True, generator=generator
    )
    return cycle(accelerator.prepare(loader))


class LossLog:
    """Per-step losses kept on the device (no host sync per step), checked for NaN every few steps."""

    def __init__(self, names: Sequence[str], steps: int, device):
        self.values = {name: torch.zeros(steps, device=device) for name in names}
        self.steps: dict[str, list[int]] = {name: [] for name in names}  # which steps logged each name

    def record(self, name: str, step: int, value: torch.Tensor) -> None:
        self.values[name][step] = value.detach().float()
        self.steps[name].append(step)

    def _logged(self, name: str) -> torch.Tensor:
        return self.values[name][torch.tensor(self.steps[name], dtype=torch.long, device=self.values[name].device)]

    def check(self) -> dict[str, float]:
        """Raise NonFiniteLossError naming the first bad step; else return the latest value of each loss."""
        latest = {}
        for name, steps in self.steps.items():
            if not steps:
                continue
            logged = self._logged(name)
            bad = ~torch.isfinite(logged)
            if bool(bad.any()):
                raise NonFiniteLossError(name, steps[int(bad.nonzero()[0])])
            latest[name] = float(logged[-1])
        return latest

    def as_lists(self) -> dict[str, dict[str, list]]:
        """{name: {"step": [...], "value": [...]}} for run.json."""
        return {name: {"step": list(steps), "value": self._logged(name).tolist()} for name, steps in self.steps.items()}


class MaskedUpdate:
    """Confines an optimizer step to the entries where the saliency mask is 1.

    Masking the gradient alone is not enough with Adam: momentum from earlier (unmasked) remain steps would
    still move masked entries. So the forget step masks the gradient (keeping Adam's moments and the clip norm
    to the salient entries) and then puts every mask-0 entry back bit for bit: p = p_old + mask * (p_new - p_old).
    Parameters whose mask is all ones cost nothing; the rest use fused `torch._foreach_*` ops.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], mask: dict[str, torch.Tensor]):
        missing = sorted(params.keys() - mask.keys())
        if missing:
            raise ValueError(f"the mask has no entry for {len(missing)} trained parameters, e.g. {missing[:3]}")
        partial = [name for name in params if not bool(mask[name].all())]
        for name in partial:
            if mask[name].shape != params[name].shape:
                raise ValueError(f"mask for {name} has shape {tuple(mask[name].shape)}, parameter {tuple(params[name].shape)}")
        self.params = [params[name] for name in partial]
        self.masks = [mask[name].to(params[name].device, params[name].dtype) for name in partial]
        self.snapshots = [torch.empty_like(p) for p in self.params]

    @torch.no_grad()
    def mask_gradients(self) -> None:
        if not self.params:  # an all-ones mask: nothing to confine
            return
        torch._foreach_mul_([p.grad for p in self.params], self.masks)

    @torch.no_grad()
    def snapshot(self) -> None:
        if self.params:
            torch._foreach_copy_(self.snapshots, self.params)

    @torch.no_grad()
    def restore_unmasked(self) -> None:
        if not self.params:
            return
        torch._foreach_sub_(self.params, self.snapshots)  # params now hold the update
        torch._foreach_mul_(self.params, self.masks)
        torch._foreach_add_(self.params, self.snapshots)


class Stepper:
    """One optimizer step: zero grads, accumulate micro-batch losses, optionally mask, clip, step."""

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizer, max_grad_norm: float | None, grad_accum: int = 1):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.max_grad_norm, self.grad_accum = max_grad_norm, grad_accum
        self.params = list(trainable_parameters(model).values())
        for p in self.params:  # grads stay allocated so masks and fused ops always see tensors
            p.grad = torch.zeros_like(p)

    def step(self, loss_fn: Callable[[], tuple[torch.Tensor, torch.Tensor]], mask: MaskedUpdate | None = None) -> torch.Tensor:
        """`loss_fn()` -> (loss to minimise, value to log); returns the logged value averaged over micro-batches."""
        self.optimizer.zero_grad(set_to_none=False)
        logged = 0.0
        for micro in range(self.grad_accum):
            last = micro == self.grad_accum - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync:
                loss, value = loss_fn()
                self.accelerator.backward(loss / self.grad_accum)
            logged = logged + value.detach() / self.grad_accum
        if mask is not None:
            mask.mask_gradients()
        if self.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        if mask is not None:
            mask.snapshot()
        self.optimizer.step()
        if mask is not None:
            mask.restore_unmasked()
        return logged


class PhaseTimer:
    """Wall time per named phase, synchronising the device once at each phase end."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
