"""Loop pieces every method shares: the accelerator, endless seeded batches, loss logs, masked steps."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from tqdm.auto import tqdm

from erase.checkpoint import Checkpoints, LoopState
from erase.config import acts_when, documented
from erase.errors import NonFiniteLossError, OptionError, UsageError, option
from erase.memory import PhaseMemory, run_sizes
from erase.sharding import clip_gradients, full_mask, is_sharded, local, shard_model, unsharded_module
from erase.objectives import REDUCTIONS, denoising_losses, drop_conditions
from erase.saliency import cycle, mask_sparsity, trainable_parameters


@documented
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
    checkpoint_every: int = field(
        default=0, metadata={"range": "[0, inf)", "help": "save a resumable state (weights, optimizer, step, random "
                                                        "states, data position, saliency mask) every K steps into "
                                                        "--checkpoint-dir; 0 = only when stopped by Ctrl-C or SIGTERM"}
    )
    checkpoint_dir: str | None = field(
        default=None, metadata={"help": "folder of resumable states (default: OUT.checkpoint beside --out; removed "
                                        "once --out is written)"}
    )
    resume: str | None = field(
        default=None, metadata={"help": "continue from a resumable state: a --checkpoint-dir folder (its latest "
                                        "state) or one of its step-N folders; give the interrupted run's other flags "
                                        "unchanged"}
    )
    fully_shard: bool = field(
        default=False, metadata={"help": "shard weights, gradients, optimizer state, Fisher and mask across the "
                                         "processes with FSDP2 (torch's fully_shard) yourself, e.g. on CPUs (gloo), "
                                         "where accelerate ignores its FSDP plugin; on GPUs, accelerate launch "
                                         "--use_fsdp --fsdp_version 2 does the same without it. Methods sfron, "
                                         "joint, ga, rl, salun"}
    )
    optimizer_8bit: bool = field(
        default=False, metadata={"help": "8-bit Adam / AdamW states (bitsandbytes' Adam8bit, AdamW8bit): 2 bytes per "
                                         "trained entry instead of 8 (SD v1.4's whole UNet: 1.7 GB instead of 6.9 GB); "
                                         "needs pip install bitsandbytes"}
    )
    frozen_dtype: str = field(
        default="auto", metadata={"help": "dtype of the frozen parts (VAE, text encoders) during the run: auto = the "
                                          "--mixed-precision dtype on a GPU, fp32 on the CPU; the model you pass and "
                                          "the saved folder keep theirs", "choices": ("auto", "fp32", "bf16", "fp16")}
    )
    deterministic: bool = field(
        default=False, metadata={"help": "deterministic GPU kernels (torch.use_deterministic_algorithms, cuDNN "
                                         "deterministic; slower), so a GPU run, or a resumed one, repeats bit for "
                                         "bit; CPU runs repeat without it"}
    )


def make_accelerator(runtime: Runtime) -> Accelerator:
    if runtime.deterministic:  # process-wide; cuBLAS reads its workspace setting at its first GPU call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    accelerator = Accelerator(mixed_precision=runtime.mixed_precision, cpu=runtime.cpu)
    kind = accelerator.distributed_type.name
    fsdp_version = getattr(getattr(accelerator.state, "fsdp_plugin", None), "fsdp_version", None) if kind == "FSDP" else None
    if kind in ("DEEPSPEED", "MEGATRON_LM") or (kind == "FSDP" and fsdp_version != 2):
        # important! the Fisher, masks and masked update work on per-parameter tensors or their FSDP2 shards
        # (DTensors); FSDP1's flat parameters and DeepSpeed's partitions are neither
        raise UsageError(f"erase runs on one process, under DDP (accelerate launch --multi_gpu) or FSDP2 (accelerate "
                         f"launch --use_fsdp --fsdp_version 2), not {kind}{' version 1' if kind == 'FSDP' else ''}: "
                         "its flattened or partitioned parameters do not keep the per-parameter tensors the Fisher and "
                         "saliency masks work on")
    set_seed(runtime.seed)
    return accelerator


class Batches:
    """Endless shuffled (images, labels) batches that count how many they handed out.

    A resumed run re-seeds the shuffling and skips as many batches, so it sees the same batches in the same order
    as an uninterrupted run (`state_dict` / `load_state_dict`, saved with every resumable state).
    """

    def __init__(self, loader, generator: torch.Generator, seed: int, device=None):
        self.loader, self.generator, self.seed, self.device = loader, generator, seed, device
        self.drawn = 0
        self._batches = cycle(loader)

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._batches)
        self.drawn += 1
        if self.device is not None:  # an unprepared loader: accelerate does not place its batches
            batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
        return batch

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.manual_seed(self.seed)
        self._batches = cycle(self.loader)
        for _ in range(state["drawn"]):
            next(self._batches)
        self.drawn = state["drawn"]


def endless_batches(dataset, batch_size: int, seed: int, accelerator: Accelerator, shard: bool = True) -> Batches:
    """Shuffled (images, labels) batches forever on the accelerator's device.

    `shard`: every process draws a disjoint share of each pass (training steps). Without it every process draws
    the same batches, for statistics that split the work by batch (Fisher, saliency), so they equal one process's.
    """
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, drop_last=True, generator=generator
    )
    if shard:
        return Batches(accelerator.prepare(loader), generator, seed)
    return Batches(loader, generator, seed, accelerator.device)


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

    def state_dict(self) -> dict:
        return {"values": {name: v.cpu() for name, v in self.values.items()},
                "steps": {name: list(steps) for name, steps in self.steps.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name, values in state["values"].items():
            self.values[name].copy_(values)
            self.steps[name] = list(state["steps"][name])


class MaskedUpdate:
    """Confines an optimizer step to the entries where the saliency mask is 1.

    The gradient is always masked (so Adam's moments and the clip norm see only the salient entries). With
    `restore` (mask mode "restore"), every mask-0 entry is then put back bit for bit: masking the gradient alone
    does not keep them fixed under Adam, whose momentum from earlier (unmasked) remain steps still moves them.
    Without it (mask mode "gradient", the official code's form) that momentum carries through.

    Memory and speed: the masks stay bool (1 byte per entry) and are cast to float `chunk_entries` at a time into
    one reused buffer (elementwise ops mixing float and bool tensors take a slow path, about 7x slower on CPU than
    float x float). The restore copies at most `chunk_entries` weights at a time too: the optimizer steps the masked
    parameters chunk by chunk (the others' gradients hidden, which every torch optimizer skips), so the copy is one
    buffer, not a second set of weights. Adam's update is elementwise, so the chunked step equals one whole step bit
    for bit. Parameters whose mask is all ones cost nothing; the rest use fused `torch._foreach_*` ops.
    """

    CHUNK_ENTRIES = 1 << 24  # 64 MB of fp32 per chunk buffer (mask cast, restore copy)

    def __init__(self, params: dict[str, torch.nn.Parameter], mask: dict[str, torch.Tensor], restore: bool = True,
                 chunk_entries: int | None = None):
        missing = sorted(params.keys() - mask.keys())
        if missing:
            raise ValueError(f"the mask has no entry for {len(missing)} trained parameters, e.g. {missing[:3]}")
        partial = [name for name in params if not bool(mask[name].all())]
        for name in partial:
            if mask[name].shape != local(params[name]).shape:
                raise ValueError(f"mask for {name} has shape {tuple(mask[name].shape)}, parameter "
                                 f"{tuple(local(params[name]).shape)}")
        self.params = [params[name] for name in partial]
        self.masks = [mask[name].to(local(params[name]).device, torch.bool) for name in partial]
        self.restore = restore
        self.chunks = self._chunks(chunk_entries or self.CHUNK_ENTRIES)
        self.buffers: dict[str, torch.Tensor] = {}  # "mask" (float mask chunk), "kept" (restore copy): kept

    def _chunks(self, limit: int) -> list[list[int]]:
        """Indices of self.params in consecutive groups of at most `limit` entries (a larger tensor alone)."""
        chunks, size = [[]], 0
        for index, p in enumerate(self.params):
            n = local(p).numel()
            if chunks[-1] and size + n > limit:
                chunks.append([])
                size = 0
            chunks[-1].append(index)
            size += n
        return [chunk for chunk in chunks if chunk]

    def _views(self, name: str, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Views shaped as `tensors` into the reused buffer `name` (grown to the largest chunk once)."""
        size = sum(t.numel() for t in tensors)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size:
            largest = max(sum(local(self.params[i]).numel() for i in chunk) for chunk in self.chunks)
            buffer = self.buffers[name] = torch.empty(max(largest, size), dtype=tensors[0].dtype,
                                                      device=tensors[0].device)
        views, offset = [], 0
        for t in tensors:
            views.append(buffer[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        return views

    def _float_masks(self, chunk: list[int], like: list[torch.Tensor]) -> list[torch.Tensor]:
        masks = self._views("mask", like)
        torch._foreach_copy_(masks, [self.masks[i] for i in chunk])  # bool -> 0.0 / 1.0
        return masks

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for chunk in self.chunks:  # none for an all-ones mask: nothing to confine
            grads = [local(self.params[i].grad) for i in chunk]
            torch._foreach_mul_(grads, self._float_masks(chunk, grads))

    @torch.no_grad()
    def step(self, optimizer, all_params: list) -> None:
        """`optimizer.step()` over `all_params`; in restore mode every mask-0 entry keeps its value bit for bit."""
        if not self.restore or not self.params:
            optimizer.step()
            return
        if getattr(optimizer, "scaler", None) is not None:  # fp16: a GradScaler steps once per update
            chunks = [list(range(len(self.params)))]
        else:
            chunks = self.chunks
        partial = {id(p) for p in self.params}
        grads = [p.grad for p in all_params]
        try:
            for number, chunk in enumerate(chunks):
                stepping = {id(self.params[i]) for i in chunk}
                for p, grad in zip(all_params, grads):  # the first chunk also steps every unmasked parameter
                    p.grad = grad if id(p) in stepping or (number == 0 and id(p) not in partial) else None
                weights = [local(self.params[i]) for i in chunk]
                kept = self._views("kept", weights)
                torch._foreach_copy_(kept, weights)
                optimizer.step()
                # old + m (new - old): torch's lerp is exact at both ends (at weight 1 it returns new - (new - old)
                # * 0), so mask-1 entries take the new weight and mask-0 entries the old one, bit for bit
                torch._foreach_lerp_(kept, weights, self._float_masks(chunk, weights))
                torch._foreach_copy_(weights, kept)
        finally:
            for p, grad in zip(all_params, grads):
                p.grad = grad


class Stepper:
    """One optimizer step over one or more loss parts: zero grads, backward each part (accumulating micro-batches),
    mask a part's gradient right after its backward where asked, clip, step, and optionally confine the update."""

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizer, max_grad_norm: float | None, grad_accum: int = 1):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.max_grad_norm, self.grad_accum = max_grad_norm, grad_accum
        self.params = list(trainable_parameters(model).values())
        self.sharded = is_sharded(model)
        self.frozen_dtype, self.undo_frozen = "float32", None  # prepare_training sets both (see frozen_dtype)
        self.grads_allocated = False  # at the first step, after any Fisher pass (which takes its own gradients)

    def allocate_gradients(self) -> None:
        """Gradients stay allocated from the first step on, so masks and fused ops always see tensors."""
        if not self.grads_allocated:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.grads_allocated = True

    def step(self, loss_fn: Callable[[], tuple[torch.Tensor, torch.Tensor]], mask: MaskedUpdate | None = None,
             scale_after_clip: float | None = None) -> torch.Tensor:
        """`loss_fn()` -> (loss to minimise, value to log); with `mask`, gradient and update stay inside it;
        `scale_after_clip` multiplies the clipped gradient (a step size relative to the clip norm)."""
        return self.step_parts([(loss_fn, mask)], restrict=mask, scale_after_clip=scale_after_clip)[0]

    def step_parts(self, parts, restrict: MaskedUpdate | None = None, after_backward=None,
                   scale_after_clip: float | None = None) -> list[torch.Tensor]:
        """parts: [(loss_fn, gradient mask or None)], backpropagated in order into one gradient; `after_backward()`
        may add to the gradient (e.g. an analytic penalty) before clipping. Returns each part's logged value."""
        self.allocate_gradients()
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
        if self.max_grad_norm is not None and self.sharded:
            clip_gradients(self.params, self.max_grad_norm, sharded=True)
        elif self.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        if scale_after_clip is not None:
            torch._foreach_mul_([p.grad for p in self.params], scale_after_clip)
        if restrict is not None:
            restrict.step(self.optimizer, self.params)
        else:
            self.optimizer.step()
        return logged


class PhaseTimer:
    """Wall time and peak memory (host RSS, GPU) per named phase, synchronising the device once at each phase end."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self.memory = PhaseMemory(device)

    def move(self, seconds: float, source: str, target: str) -> None:
        """Book `seconds` spent inside phase `source` under `target` instead (e.g. evaluation inside a loop)."""
        self.seconds[source] = self.seconds.get(source, 0.0) - seconds
        self.seconds[target] = self.seconds.get(target, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str):
        self.memory.start()
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.memory.stop(name)


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
    mask: dict | None = None  # the saliency mask, where the method has one: resumable states keep it
    kept: dict = field(default_factory=dict)  # a method's own state a resumed run must get back (see `keep`)
    held: dict = field(default_factory=dict)  # sizes of statistics the run held and freed, e.g. "fisher_bytes"

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def params(self) -> dict[str, torch.nn.Parameter]:
        return trainable_parameters(self.adapter.denoiser)

    def remain_part(self, weight: float, antithetic: bool) -> Callable[[], tuple]:
        """The remain step's loss function every method shares: `weight` x the mean denoising loss of the next
        remain batch, logged unweighted."""
        def part():
            losses, _ = self.next_losses("remain", antithetic)
            return weight * losses.mean(), losses.mean()

        return part

    def pseudo_targets(self, forget_data, remain_data, pseudo_class: int | None, pseudo_random: bool,
                       anchor: str = "fixed"):
        """(the fixed pseudo class, or with `anchor` "nearest" a table of one remain prompt per forget prompt; the
        remaining classes on the device) that a pseudo-label forget objective maps the forget conditions to; the
        run's conventions record the choice (None when drawn per sample)."""
        from erase.objectives import default_pseudo_class, nearest_prompts

        remain_classes = torch.unique(remain_data.labels).to(self.device)
        if anchor == "nearest":  # prepare_sfron refuses it beside --pseudo-random / --pseudo-class
            names = self.adapter.class_names
            forget_ids = forget_data.labels.unique().tolist()
            table = nearest_prompts(names, forget_ids, remain_classes.tolist())
            self.conventions["pseudo_class"] = {names[i]: names[int(table[i])] for i in forget_ids}
            return table.to(self.device), remain_classes
        chosen = default_pseudo_class(forget_data.labels.unique().tolist(), remain_classes.tolist(), pseudo_class)
        self.conventions["pseudo_class"] = None if pseudo_random else chosen
        return chosen, remain_classes

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

    def keep(self, name: str, obj) -> None:
        """Save `obj` (a torch.Generator, a dict or list changed in place, or anything with state_dict and
        load_state_dict) with every resumable state and put it back on resume."""
        self.kept[name] = obj

    def loop(self, names: Sequence[str], body: Callable[[int], dict], runtime: Runtime, description: str) -> "LossLog":
        """Run `body(step)` -> {loss name: value} for every step (timed as the "unlearn" phase)."""
        tracked = {"forget_batches": self.forget_batches, "remain_batches": self.remain_batches, **self.kept}
        return run_steps(names, self.steps, body, runtime, self.accelerator, self.timer, description, "unlearn",
                         self.monitor, self.adapter, tracked=tracked, mask=self.mask)

    def finish(self, log: "LossLog", mask: dict | None = None, **extra) -> dict:
        """Unwrap the model, put back the frozen parts the run cast, and return the result every method returns
        (run.json fields)."""
        self.adapter.denoiser = self.accelerator.unwrap_model(self.adapter.denoiser)
        sizes = run_sizes(self.adapter, self.optimizer, mask, self.held.get("fisher_bytes"))  # this process's share
        if self.stepper.undo_frozen is not None:
            self.stepper.undo_frozen()
        if self.stepper.sharded:  # whole weights and mask on every process, as under DDP, for saving and sampling
            if mask is not None:
                mask = full_mask(trainable_parameters(self.adapter.denoiser), mask)
            self.adapter.denoiser = unsharded_module(self.adapter.denoiser)
        return {
            "mask": mask,
            "mask_sparsity": mask_sparsity(mask) if mask is not None else None,
            "losses": log.as_lists(),
            "timings": self.timer.seconds,
            "device": str(self.accelerator.device),
            "num_processes": self.accelerator.num_processes,
            "is_main_process": self.accelerator.is_main_process,
            "process_weight_digests": weight_digests(self.accelerator, self.adapter.denoiser),
            "monitor": self.monitor.history if self.monitor is not None else None,
            "conventions": self.conventions,
            "memory": {"frozen_dtype": self.stepper.frozen_dtype,
                       "optimizer": type(getattr(self.optimizer, "optimizer", self.optimizer)).__name__,
                       "phases": self.timer.memory.peaks, "peak_rss_per_phase": self.timer.memory.resettable,
                       "sharded": self.stepper.sharded, "sizes": sizes},
            **extra,
        }


def weight_digests(accelerator: Accelerator, module: torch.nn.Module) -> list[str] | None:
    """SHA-256 of each process's trained weights (multi-process runs only): equal digests mean the replicas agree
    bit for bit."""
    if accelerator.num_processes == 1:
        return None
    from accelerate.utils import gather_object

    digest = hashlib.sha256()
    for name, p in sorted(trainable_parameters(module).items()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return gather_object([digest.hexdigest()])


FROZEN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def frozen_dtype(runtime: Runtime, device: torch.device) -> torch.dtype:
    """The dtype the frozen parts run in: `runtime.frozen_dtype`, or under "auto" the mixed-precision dtype on a
    GPU (as diffusers' training scripts hold the VAE and text encoder) and fp32 elsewhere."""
    if runtime.frozen_dtype != "auto":
        return FROZEN_DTYPES[runtime.frozen_dtype]
    if device.type == "cuda" and runtime.mixed_precision != "no":
        return FROZEN_DTYPES[runtime.mixed_precision]
    return torch.float32


def make_optimizer(params, runtime: Runtime, device: torch.device, name: str, lr: float, weight_decay: float):
    """Adam or AdamW over `params`: bitsandbytes' 8-bit variants with `runtime.optimizer_8bit`; else torch's fused
    kernel on GPUs and CPUs (on a GPU the foreach default builds a temporary the size of all trained weights at each
    step; on a CPU the default runs a dozen separate ops per tensor: measured 4.3x slower on 88M entries)."""
    if runtime.optimizer_8bit:
        try:
            import bitsandbytes
        except ImportError:
            raise OptionError(f"{option('--optimizer-8bit', 'optimizer_8bit=True')} needs bitsandbytes: "
                              "pip install bitsandbytes (or leave the option off)") from None
        optimizer_class = {"adam": bitsandbytes.optim.Adam8bit, "adamw": bitsandbytes.optim.AdamW8bit}[name]
        return optimizer_class(params, lr=lr, weight_decay=weight_decay)
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    fused = device.type in ("cuda", "cpu")  # one pass per tensor: 4x faster than the CPU's per-tensor loop of ops
    return optimizer_class(params, lr=lr, weight_decay=weight_decay, **({"fused": True} if fused else {}))


def prepare_training(adapter, runtime: Runtime, *, lr: float, max_grad_norm: float | None, optimizer: str = "adam",
                     weight_decay: float = 0.0):
    """(accelerator, timer, optimizer, stepper) for training `adapter.denoiser`'s trainable parameters."""
    accelerator = make_accelerator(runtime)
    dtype = frozen_dtype(runtime, accelerator.device)
    undo_frozen = None
    if runtime.frozen_dtype != "auto" and not getattr(adapter, "frozen_modules", list)():
        raise OptionError(f"{option('--frozen-dtype')} {runtime.frozen_dtype}: this {adapter.backbone} model has no "
                          "frozen VAE or text encoder to cast; leave it at auto")
    if dtype != torch.float32 and hasattr(adapter, "replace_frozen"):
        import copy

        # copies, cast where the originals are (before the move): the caller's pipeline shares the frozen parts and
        # a cast in place would change its weights; the device then holds only the cast copies
        put_back = adapter.replace_frozen(lambda module: copy.deepcopy(module).to(dtype=dtype))

        def restore_originals() -> None:
            put_back()
            adapter.to(accelerator.device)  # the originals join the trained denoiser, as without the cast

        undo_frozen = restore_originals

    adapter.to(accelerator.device)  # frozen parts (VAE, text encoder) too; prepare() moves only the denoiser
    adapter.denoiser.train()
    if runtime.fully_shard:  # FSDP2 by hand; under accelerate's FSDP plugin, prepare() below applies it instead
        shard_model(adapter.denoiser)
    opt = make_optimizer(trainable_parameters(adapter.denoiser).values(), runtime, accelerator.device, optimizer,
                         lr, weight_decay)  # after sharding: the optimizer holds the shards
    module = adapter.denoiser
    if runtime.fully_shard:
        opt = accelerator.prepare(opt)  # the model is not prepared: a multi-process run would wrap it in DDP
    else:
        adapter.denoiser, opt = accelerator.prepare(adapter.denoiser, opt)
    if adapter.denoiser is not module and hasattr(module, "config"):
        adapter.denoiser.config = module.config  # DistributedDataParallel hides it; the adapters read it per call
    stepper = Stepper(accelerator, adapter.denoiser, opt, max_grad_norm, runtime.grad_accum)
    stepper.frozen_dtype, stepper.undo_frozen = str(dtype).removeprefix("torch."), undo_frozen
    return accelerator, PhaseTimer(accelerator.device), opt, stepper


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a run at the end of a step, after it saved a resumable state there."""

    def __init__(self, signal_number: int, step: int, steps: int, folder: Path, is_main_process: bool,
                 num_processes: int):
        self.signal_number, self.step, self.steps, self.folder = signal_number, step, steps, folder
        self.is_main_process, self.num_processes = is_main_process, num_processes
        super().__init__(f"{signal.Signals(signal_number).name} at step {step} of {steps}; state saved to {folder}")


class NonFiniteWeightsError(NonFiniteLossError):
    """A non-finite gradient made the weights non-finite; its loss would only show it a step later."""

    def __init__(self, step: int):
        self.phase, self.step = "weights", step
        UsageError.__init__(self, f"the weights became non-finite by step {step} (a non-finite gradient); nothing was "
                                  "written. Lower --lr or --forget-alpha, or keep --max-grad-norm on.")


def check_finite_weights(accelerator: Accelerator, step: int) -> None:
    """Raise NonFiniteWeightsError if any prepared model's weight is NaN or infinite (one host sync)."""
    params = [p for model in accelerator._models for p in model.parameters()]
    if params and not bool(torch.isfinite(torch.stack(torch._foreach_norm(params, float("inf")))).all()):  # max |w|
        raise NonFiniteWeightsError(step)


class StopRequest:
    """Turns Ctrl-C and SIGTERM into a request the loop honours at the end of the current step (a second signal
    stops at once). Only in the main thread, where Python delivers signals."""

    def __init__(self):
        self.signal_number: int | None = None
        self.previous: dict = {}

    def _handle(self, number, frame) -> None:
        if self.signal_number is not None:
            raise KeyboardInterrupt
        self.signal_number = number

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def resumable_states(runtime: Runtime, accelerator, adapter, log: LossLog, tracked: dict | None, monitor, mask,
                     description: str, steps: int):
    """(Checkpoints or None, its LoopState or None, the step to start from) for a loop: states are kept when the
    runtime names a checkpoint folder, and `runtime.resume` restores one."""
    sharded = adapter is not None and is_sharded(adapter.denoiser)
    if sharded and (runtime.resume is not None or runtime.checkpoint_every > 0):
        raise UsageError(f"{option('--checkpoint-every')} and {option('--resume')} do not work sharded (FSDP) yet; "
                         "leave them off, or run under DDP")
    if (runtime.checkpoint_dir is None and runtime.resume is None) or sharded:
        return None, None, 0
    if runtime.checkpoint_dir is None:
        raise UsageError(f"{option('--resume')} needs {option('--checkpoint-dir')} (erase unlearn and erase train set it from {option('--out')})")
    loop_state = LoopState(log, dict(tracked or {}), monitor, accelerator.device)
    identity = {"run": description, "steps": steps, "seed": runtime.seed, "num_processes": accelerator.num_processes,
                "grad_accum": runtime.grad_accum, "mixed_precision": runtime.mixed_precision}
    checkpoints = Checkpoints(runtime.checkpoint_dir, accelerator, identity, mask)
    start = checkpoints.load(runtime.resume, loop_state) if runtime.resume is not None else 0
    return checkpoints, loop_state, start


def agreed_stop(signal_number: int | None, accelerator, at_log: bool) -> int | None:
    """The signal to stop on after this step, or None. Several processes must stop at the same step: they agree
    when the log syncs anyway (one reduce), the signal any of them got standing for all."""
    if accelerator.num_processes == 1:
        return signal_number
    if not at_log:
        return None
    flag = torch.tensor([float(signal_number or 0)], device=accelerator.device)
    stop = int(accelerator.reduce(flag, reduction="sum").item()) or None
    return signal_number or (signal.SIGTERM if stop else None)


def run_steps(names: Sequence[str], steps: int, body: Callable[[int], dict], runtime: Runtime, accelerator,
              timer: PhaseTimer, description: str, phase: str, monitor: Monitor | None = None,
              adapter=None, tracked: dict | None = None, mask: dict | None = None) -> LossLog:
    """`body(step)` -> {loss name: value} for every step, with a progress bar and a NaN check every log_every steps;
    `monitor` evaluates `adapter` when due, its time booked as the "monitor" phase.

    With `runtime.checkpoint_dir`, a resumable state (accelerate's, plus the loss log, `tracked` objects' states
    and `mask`) is saved every `runtime.checkpoint_every` steps and when Ctrl-C or SIGTERM arrives (then the loop
    raises Interrupted), and `runtime.resume` continues from one. Without it the loop is as before: nothing is saved.
    """
    log = LossLog(names, steps, accelerator.device)
    checkpoints, loop_state, start = resumable_states(runtime, accelerator, adapter, log, tracked, monitor, mask,
                                                      description, steps)
    progress = tqdm(range(start, steps), desc=description, disable=not accelerator.is_main_process,
                    initial=start, total=steps)
    probing = saving = 0.0
    stop_request = StopRequest() if checkpoints is not None else contextlib.nullcontext()

    def save(step_done: int) -> None:
        nonlocal saving
        started = time.perf_counter()
        log.check()  # a state is saved only if every loss so far is finite
        check_finite_weights(accelerator, step_done)  # and the last update too (its loss comes a step later)
        checkpoints.save(loop_state, step_done)
        saving += time.perf_counter() - started

    try:
        with timer.phase(phase), stop_request:
            for step in progress:
                for name, value in body(step).items():
                    log.record(name, step, value)
                at_log = (step + 1) % runtime.log_every == 0 or step + 1 == steps
                if at_log:
                    progress.set_postfix(log.check())
                if monitor is not None and monitor.due(step, steps):
                    started = time.perf_counter()
                    monitor(adapter, step)
                    probing += time.perf_counter() - started
                if checkpoints is None:
                    continue
                stop = agreed_stop(stop_request.signal_number, accelerator, at_log)
                if stop is not None:
                    save(step + 1)
                    raise Interrupted(stop, step + 1, steps, checkpoints.folder, accelerator.is_main_process,
                                      accelerator.num_processes)
                if runtime.checkpoint_every > 0 and (step + 1) % runtime.checkpoint_every == 0 and step + 1 < steps:
                    save(step + 1)
    except NonFiniteLossError as error:
        if checkpoints is not None and checkpoints.latest is not None:
            error.args = (f"{error} The last resumable state, {checkpoints.latest}, predates it and stays valid: "
                          f"--resume {checkpoints.folder} continues from there.",)
        raise
    if monitor is not None:
        timer.move(probing, phase, "monitor")
    if saving:
        timer.move(saving, phase, "checkpoint")
    return log


# `acts_when` metadata of the options that shape the remain step, in a method whose remain_alpha can weight it to nothing
WITH_REMAIN_STEP = acts_when("remain_alpha", "above 0", lambda c: c.remain_alpha > 0)


def remain_label_dropout_field(acts: dict | None = None):
    """The `remain_label_dropout` config field of every method with a remain step (`acts`: `acts_when` metadata,
    for a method whose remain term can be weighted to nothing)."""
    return field(default=None, metadata={**(acts or {}),
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
        raise OptionError(f"{option('--remain-label-dropout')} must be in [0, 1), got {remain_label_dropout}")
    if remain_label_dropout > 0 and not getattr(adapter, "has_null_condition", True):
        raise OptionError(f"{option('--remain-label-dropout')} {remain_label_dropout}: this {adapter.backbone} model has no null "
                         "label to drop to; leave it at 0")
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
        raise OptionError(f"{option('--steps')} must be at least 1, got {steps}")
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
    if is_sharded(module):
        raise UsageError("this method keeps a frozen copy of the whole model, which is not sharded; run it on one "
                         "process or under DDP (accelerate launch --multi_gpu), or use a method that runs sharded")
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
