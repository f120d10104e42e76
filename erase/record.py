"""The JSON record of every run, and output folders that appear whole or not at all."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from erase.errors import OutputError, option

RECORDED_PACKAGES = ("erase", "torch", "diffusers", "transformers", "accelerate", "torchmetrics", "safetensors", "numpy")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Python, packages, host and accelerator facts that a reader needs to reproduce a number."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "packages": package_versions(),
        "command": sys.argv,
    }


def to_jsonable(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot record {type(value).__name__} in run.json")


def as_json(record):
    """`record` exactly as its JSON file holds it (dataclasses as dicts, paths as strings, tensors as lists)."""
    return json.loads(json.dumps(record, default=to_jsonable))


def write_json(path: str | Path, record: dict) -> None:
    Path(path).write_text(json.dumps(record, indent=2, default=to_jsonable) + "\n")


def check_output_file(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output file without --overwrite."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputError(f"{option('--out', 'out')} {str(out)!r} exists; choose another file or pass "
                          f"{option('--overwrite', 'overwrite=True')}")
    return out


def check_output_dir(out: str | Path, overwrite: bool, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Refuse an output folder that would clobber an input or, without --overwrite, existing files."""
    out = Path(out)
    for source in inputs:
        source = Path(source).resolve()
        target = out.resolve()
        if target == source or source in target.parents or target in source.parents:
            raise OutputError(f"{option('--out', 'out')} {str(out)!r} overlaps the input {str(source)!r}; write the result to another folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option('--out', 'out')} {str(out)!r} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{option('--out', 'out')} {str(out)!r} exists and is not empty; choose another folder or pass "
                          f"{option('--overwrite', 'overwrite=True')}")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False):
    """Yield a temporary folder beside `out`; on success it replaces `out`, on any error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like any new folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        if any(out.iterdir()) and not overwrite:  # appeared while we worked
            shutil.rmtree(staging, ignore_errors=True)
            raise OutputError(f"{option('--out', 'out')} {str(out)!r} was filled by someone else during the run; result discarded")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "x")
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def checkpoint_folder(out: str | Path | None, runtime, overwrite: bool) -> Path | None:
    """Settle `runtime.checkpoint_dir` (default OUT.checkpoint beside --out, never --out itself; without an output
    folder, only where given) and check --resume before any work: a folder holding an earlier run's state is refused
    unless resumed or overwritten."""
    from erase.checkpoint import STATE_PREFIX, find_state

    if out is None and not runtime.checkpoint_dir:
        if runtime.checkpoint_every or runtime.resume is not None:
            raise OutputError(f"{option('--checkpoint-every')} and {option('--resume')} need "
                              f"{option('--checkpoint-dir')} (or an output folder) for the resumable states")
        return None
    folder = Path(runtime.checkpoint_dir) if runtime.checkpoint_dir else Path(out).with_name(Path(out).name + ".checkpoint")
    if out is not None and (folder.resolve() == Path(out).resolve() or Path(out).resolve() in folder.resolve().parents):
        raise OutputError(f"{option('--checkpoint-dir')} {str(folder)!r} is inside {option('--out', 'out')}; put it beside "
                          f"{option('--out', 'out')}")
    runtime.checkpoint_dir = str(folder)
    if runtime.resume is not None:
        find_state(runtime.resume)
    elif any(folder.glob(f"{STATE_PREFIX}*")) and not overwrite:
        raise OutputError(f"{str(folder)!r} holds a resumable state of an earlier run; continue it with {option('--resume')} "
                         f"{folder}, or pass {option('--overwrite', 'overwrite=True')} to start over (the new run's first state replaces it)")
    return folder


def discard_checkpoints(folder: str | Path) -> None:
    """Remove the run's resumable states once --out holds its result (and the folder, if nothing else is in it)."""
    from erase.checkpoint import STATE_PREFIX

    folder = Path(folder)
    for state in [*folder.glob(f"{STATE_PREFIX}*"), *folder.glob(f".{STATE_PREFIX}*.partial")]:
        shutil.rmtree(state, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
