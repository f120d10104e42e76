"""Memory accounting: peak host RSS and GPU memory per phase, and the sizes of what a run holds (run.json "memory")."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak resident set size of this process (Linux: `echo 5 > /proc/self/clear_refs`, the
    VmHWM counter); False where it cannot be reset (then peaks count from the process start)."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int | None:
    """A size field of /proc/self/status (e.g. "VmHWM", "VmRSS") in bytes, or None off Linux."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss() -> int:
    """Peak resident set size of this process in bytes since the last reset (VmHWM), or since it started."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def current_rss() -> int:
    """Resident set size of this process now (VmRSS), or the peak where /proc is absent."""
    current = _status_bytes("VmRSS")
    return current if current is not None else peak_rss()


class PhaseMemory:
    """Peak host RSS and peak GPU memory allocated during each named phase (the largest over re-entries)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.peaks: dict[str, dict] = {}
        self.resettable = True

    def start(self) -> None:
        self.resettable = reset_peak_rss() and self.resettable
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self, name: str) -> None:
        previous = self.peaks.get(name, {})
        peak = {"peak_rss_bytes": max(peak_rss(), previous.get("peak_rss_bytes", 0))}
        if self.device.type == "cuda":
            peak["peak_gpu_allocated_bytes"] = max(torch.cuda.max_memory_allocated(self.device),
                                                   previous.get("peak_gpu_allocated_bytes", 0))
            peak["peak_gpu_reserved_bytes"] = max(torch.cuda.max_memory_reserved(self.device),
                                                  previous.get("peak_gpu_reserved_bytes", 0))
        self.peaks[name] = peak


def release_freed_memory() -> None:
    """Hand memory freed on the host back to the OS (glibc's malloc_trim): tensors under glibc's mmap threshold
    (32 MB) are freed into the heap, which keeps them resident, so the Fisher sums of SD's many small tensors would
    stay in the RSS of every later phase unless the next allocations happen to fit them. No-op off glibc."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def tensor_bytes(tensors) -> int:
    """Bytes held by `tensors` (each counted once; DTensors by their local shard)."""
    seen, total = set(), 0
    for t in tensors:
        t = getattr(t, "_local_tensor", t)
        if not isinstance(t, torch.Tensor) or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def optimizer_state_bytes(optimizer) -> int:
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values())


def run_sizes(adapter, optimizer, mask: dict | None, fisher_bytes: int | None) -> dict:
    """Bytes of what a run holds, and the floor: weights + gradients + optimizer state + frozen parts."""
    denoiser = getattr(adapter.denoiser, "module", adapter.denoiser)
    trained = [p for p in denoiser.parameters() if p.requires_grad]
    frozen_modules = adapter.frozen_modules() if hasattr(adapter, "frozen_modules") else []
    sizes = {
        "denoiser_parameters": sum(p.numel() for p in denoiser.parameters()),
        "trained_parameters": sum(p.numel() for p in trained),
        "weights_bytes": tensor_bytes(list(denoiser.parameters()) + list(denoiser.buffers())),
        "gradients_bytes": tensor_bytes(trained),  # one gradient of each trained parameter's dtype
        "optimizer_state_bytes": optimizer_state_bytes(optimizer),
        "frozen_bytes": tensor_bytes(t for m in frozen_modules for t in (*m.parameters(), *m.buffers())),
        "fisher_bytes": fisher_bytes,
        "mask_bytes": tensor_bytes(mask.values()) if mask is not None else None,
    }
    sizes["floor_bytes"] = (sizes["weights_bytes"] + sizes["gradients_bytes"] + sizes["optimizer_state_bytes"]
                            + sizes["frozen_bytes"])
    return sizes
