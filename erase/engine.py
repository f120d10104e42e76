"""Loop pieces every method shares: the accelerator, endless seeded batches, loss logs, masked steps."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from tqdm.auto import tqdm

from erase.errors import NonFiniteLossError, UsageError
from erase.objectives import REDUCTIONS, denoising_losses, drop_conditions
from erase.saliency import cycle, mask_sparsity, trainable_parameters


@dataclass
class Runtime:
    """Where and how a run executes; the same for every method."""

    seed: int = field(default=0, metadata={"range": "[0, 4294967295]", "help": "seed for weights init, data order, noise and timesteps"})
    mixed_precision: str = field(
        default="no", metadata={"help": "autocast precision: no (fp32), fp16 (GPU) or bf16 (recent GPUs and CPUs); weights stay fp32", "choices": ("no", "fp16", "bf16")}
    )
    grad_accum: int = field(default=1, metadata={"range": "[1, inf)", "help": "micro-batches accumulated per optimizer step"})
    cpu: bool = field(default=False, metadata={"help": "run on the CPU even when a GPU is present"})
    log_every: int = field(
        default=10, metadata={"range": "[1, inf)", "help": "steps between progress-bar loss updates and NaN checks (each is a host sync)"}
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

    The gradient is always masked (so Adam's moments and the clip norm see only the salient entries). With
    `restore` (mask mode "restore"), every mask-0 entry is then put back bit for bit, p = p_old + mask * (p_new -
    p_old): masking the gradient alone does not keep them fixed under Adam, whose momentum from earlier (unmasked)
    remain steps still moves them. Without it (mask mode "gradient", the official code's form) that momentum carries
    through. Parameters whose mask is all ones cost nothing; the rest use fused `torch._foreach_*` ops.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], mask: dict[str, torch.Tensor], restore: bool = True):
        missing = sorted(params.keys() - mask.keys())
        if missing:
            raise ValueError(f"the mask has no entry for {len(missing)} trained parameters, e.g. {missing[:3]}")
        partial = [name for name in params if not bool(mask[name].all())]
        for name in partial:
            if mask[name].shape != params[name].shape:
                raise ValueError(f"mask for {name} has shape {tuple(mask[name].shape)}, parameter {tuple(params[name].shape)}")
        self.params = [params[name] for name in partial]
        self.masks = [mask[name].to(params[name].device, params[name].dtype) for name in partial]
        self.restore = restore
        self.snapshots = [torch.empty_like(p) for p in self.params] if restore else []

    @torch.no_grad()
    def mask_gradients(self) -> None:
        if not self.params:  # an all-ones mask: nothing to confine
            return
        torch._foreach_mul_([p.grad for p in self.params], self.masks)

    @torch.no_grad()
    def snapshot(self) -> None:
        if self.params and self.restore:
            torch._foreach_copy_(self.snapshots, self.params)

    @torch.no_grad()
    def restore_unmasked(self) -> None:
        if not self.params or not self.restore:
            return
        torch._foreach_sub_(self.params, self.snapshots)  # params now hold the update
        torch._foreach_mul_(self.params, self.masks)
        torch._foreach_add_(self.params, self.snapshots)


class Stepper:
    """One optimizer step over one or more loss parts: zero grads, backward each part (accumulating micro-batches),
    mask a part's gradient right after its backward where asked, clip, step, and optionally confine the update."""

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizer, max_grad_norm: float | None, grad_accum: int = 1):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.max_grad_norm, self.grad_accum = max_grad_norm, grad_accum
        self.params = list(trainable_parameters(model).values())
        for p in self.params:  # grads stay allocated so masks and fused ops always see tensors
            p.grad = torch.zeros_like(p)

    def step(self, loss_fn: Callable[[], tuple[torch.Tensor, torch.Tensor]], mask: MaskedUpdate | None = None,
             scale_after_clip: float | None = None) -> torch.Tensor:
        """`loss_fn()` -> (loss to minimise, value to log); with `mask`, gradient and update stay inside it;
        `scale_after_clip` multiplies the clipped gradient (a step size relative to the clip norm)."""
        return self.step_parts([(loss_fn, mask)], restrict=mask, scale_after_clip=scale_after_clip)[0]

    def step_parts(self, parts, restrict: MaskedUpdate | None = None, after_backward=None,
                   scale_after_clip: float | None = None) -> list[torch.Tensor]:
        """parts: [(loss_fn, gradient mask or None)], backpropagated in order into one gradient; `after_backward()`
        may add to the gradient (e.g. an analytic penalty) before clipping. Returns each part's logged value."""
        self.optimizer.zero_grad(set_to_none=False)
        logged = []
        for loss_fn, grad_mask in parts:
            value = 0.0
            for micro in range(self.grad_accum):
                sync = contextlib.nullcontext() if micro == self.grad_accum - 1 else self.accelerator.no_sync(self.model)
                with sync:
                    loss, shown = loss_fn()
                    self.accelerator.backward(loss / self.grad_accum)
                value = value + shown.detach() / self.grad_accum
            if grad_mask is not None:
                grad_mask.mask_gradients()
            logged.append(value)
        if after_backward is not None:
            after_backward()
        if self.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        if scale_after_clip is not None:
            torch._foreach_mul_([p.grad for p in self.params], scale_after_clip)
        if restrict is not None:
            restrict.snapshot()
        self.optimizer.step()
        if restrict is not None:
            restrict.restore_unmasked()
        return logged


class PhaseTimer:
    """Wall time per named phase, synchronising the device once at each phase end."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}

    def move(self, seconds: float, source: str, target: str) -> None:
        """Book `seconds` spent inside phase `source` under `target` instead (e.g. evaluation inside a loop)."""
        self.seconds[source] = self.seconds.get(source, 0.0) - seconds
        self.seconds[target] = self.seconds.get(target, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class Monitor:
    """`evaluate(adapter) -> {metric: float}` after every `every` steps of a run, e.g. the benchmark's FA probe.

    Its time is booked as the "monitor" phase, not the method's, and the global random state is restored after
    each call, so monitoring does not change the run it watches.
    """

    every: int
    evaluate: Callable[[object], dict]
    history: list = field(default_factory=list)

    def due(self, step: int, steps: int) -> bool:
        return (step + 1) % self.every == 0 or step + 1 == steps

    def __call__(self, adapter, step: int) -> None:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())), torch.no_grad():
            self.history.append({"step": step + 1, **self.evaluate(adapter)})


@dataclass
class UnlearnRun:
    """What every method's loop needs, set up the same way for all of them."""

    adapter: object
    accelerator: Accelerator
    timer: PhaseTimer
    optimizer: torch.optim.Optimizer
    stepper: Stepper
    forget_batches: Iterator
    remain_batches: Iterator
    steps: int
    conventions: dict  # run_conventions(): pixel reductions, remain label dropout, pseudo class (run.json records it)
    monitor: Monitor | None = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def params(self) -> dict[str, torch.nn.Parameter]:
        return trainable_parameters(self.adapter.denoiser)

    def next_losses(self, which: str, antithetic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample denoising losses of the next forget or remain batch (reduced over pixels as the run's
        conventions say; remain conditions dropped to null at the run's remain label-dropout rate), and its
        conditions."""
        images, labels = next(self.forget_batches if which == "forget" else self.remain_batches)
        if which == "remain":
            labels = drop_conditions(self.adapter, labels, self.conventions["remain_label_dropout"])
        losses = denoising_losses(self.adapter, self.adapter.encode(images), labels, antithetic=antithetic,
                                  reduction=self.conventions[f"{which}_reduction"])
        return losses, labels

    def loop(self, names: Sequence[str], body: Callable[[int], dict], runtime: Runtime, description: str) -> "LossLog":
        """Run `body(step)` -> {loss name: value} for every step (timed as the "unlearn" phase)."""
        return run_steps(names, self.steps, body, runtime, self.accelerator, self.timer, description, "unlearn",
                         self.monitor, self.adapter)

    def finish(self, log: "LossLog", mask: dict | None = None, **extra) -> dict:
        """Unwrap the model and return the result every method returns (run.json fields)."""
        self.adapter.denoiser = self.accelerator.unwrap_model(self.adapter.denoiser)
        return {
            "mask": mask,
            "mask_sparsity": mask_sparsity(mask) if mask is not None else None,
            "losses": log.as_lists(),
            "timings": self.timer.seconds,
            "device": str(self.accelerator.device),
            "num_processes": self.accelerator.num_processes,
            "is_main_process": self.accelerator.is_main_process,
            "monitor": self.monitor.history if self.monitor is not None else None,
            "conventions": self.conventions,
            **extra,
        }


def prepare_training(adapter, runtime: Runtime, *, lr: float, max_grad_norm: float | None, optimizer: str = "adam",
                     weight_decay: float = 0.0):
    """(accelerator, timer, optimizer, stepper) for training `adapter.denoiser`'s trainable parameters."""
    accelerator = make_accelerator(runtime)
    adapter.to(accelerator.device)  # frozen parts (VAE, text encoder) too; prepare() moves only the denoiser
    adapter.denoiser.train()
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
    opt = optimizer_class(trainable_parameters(adapter.denoiser).values(), lr=lr, weight_decay=weight_decay)
    adapter.denoiser, opt = accelerator.prepare(adapter.denoiser, opt)
    stepper = Stepper(accelerator, adapter.denoiser, opt, max_grad_norm, runtime.grad_accum)
    return accelerator, PhaseTimer(accelerator.device), opt, stepper


def run_steps(names: Sequence[str], steps: int, body: Callable[[int], dict], runtime: Runtime, accelerator,
              timer: PhaseTimer, description: str, phase: str, monitor: Monitor | None = None,
              adapter=None) -> LossLog:
    """`body(step)` -> {loss name: value} for every step, with a progress bar and a NaN check every log_every steps;
    `monitor` evaluates `adapter` when due, its time booked as the "monitor" phase."""
    log = LossLog(names, steps, accelerator.device)
    progress = tqdm(range(steps), desc=description, disable=not accelerator.is_local_main_process)
    probing = 0.0
    with timer.phase(phase):
        for step in progress:
            for name, value in body(step).items():
                log.record(name, step, value)
            if (step + 1) % runtime.log_every == 0 or step + 1 == steps:
                progress.set_postfix(log.check())
            if monitor is not None and monitor.due(step, steps):
                started = time.perf_counter()
                monitor(adapter, step)
                probing += time.perf_counter() - started
    if monitor is not None:
        timer.move(probing, phase, "monitor")
    return log


def remain_label_dropout_field():
    """The `remain_label_dropout` config field of every method with a remain step."""
    return field(default=None, metadata={
        "help": "share of remain labels dropped to the null class, so guided sampling's unconditional branch keeps "
                "training (default: the base model's recorded training rate, as `erase train` writes it; official "
                "SFR-on and SalUn DDPM code: 0.1); 0 turns it off"})


def run_conventions(adapter, forget_reduction: str, remain_reduction: str, remain_label_dropout: float | None) -> dict:
    """The loss conventions a run trains under, checked and resolved; run.json records them."""
    for reduction in (forget_reduction, remain_reduction):
        if reduction not in REDUCTIONS:
            raise UsageError(f"loss reduction {reduction!r} is not one of {REDUCTIONS}")
    if remain_label_dropout is None:
        remain_label_dropout = float(adapter.info.get("label_dropout") or 0.0)
    if not 0.0 <= remain_label_dropout < 1.0:
        raise UsageError(f"--remain-label-dropout must be in [0, 1), got {remain_label_dropout}")
    return {"forget_reduction": forget_reduction, "remain_reduction": remain_reduction,
            "remain_label_dropout": remain_label_dropout if adapter.conditional else 0.0,
            "base_label_dropout": adapter.info.get("label_dropout")}


def start_run(adapter, forget_data, remain_data, runtime: Runtime, *, steps: int, lr: float, batch_size: int,
              max_grad_norm: float | None, optimizer: str = "adam", weight_decay: float = 0.0,
              monitor: Monitor | None = None, forget_reduction: str = "mean", remain_reduction: str = "mean",
              remain_label_dropout: float | None = 0.0) -> UnlearnRun:
    """The shared setup of every erasure method, plus endless seeded forget and remain batches.

    `remain_label_dropout` None = the base model's recorded training rate, so remain steps keep training the
    null condition that classifier-free guided sampling uses."""
    if steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    conventions = run_conventions(adapter, forget_reduction, remain_reduction, remain_label_dropout)
    accelerator, timer, opt, stepper = prepare_training(adapter, runtime, lr=lr, max_grad_norm=max_grad_norm,
                                                        optimizer=optimizer, weight_decay=weight_decay)
    return UnlearnRun(
        adapter=adapter, accelerator=accelerator, timer=timer, optimizer=opt, stepper=stepper,
        forget_batches=endless_batches(forget_data, batch_size, runtime.seed, accelerator),
        remain_batches=endless_batches(remain_data, batch_size, runtime.seed + 1, accelerator),
        steps=steps, monitor=monitor, conventions=conventions,
    )


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A gradient-free copy of the unwrapped model: the "original model" several baselines compare against."""
    import copy

    module = getattr(module, "module", module)
    return copy.deepcopy(module).requires_grad_(False).eval()


@contextlib.contextmanager
def swapped_denoiser(adapter, module: torch.nn.Module):
    """Let the adapter predict with `module` (e.g. the frozen original) inside the block."""
    trained = adapter.denoiser
    adapter.denoiser = module
    try:
        yield adapter
    finally:
        adapter.denoiser = trained
