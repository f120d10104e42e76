"""Resumable states: where a run's state lives, what it holds, and how it is written and read back.

A state folder (`OUT.checkpoint/step-0000120`) holds accelerate's `save_state` files (weights as safetensors, the
optimizer and random states, which accelerate reads with `torch.load(weights_only=True)`), the toolkit's own loop
state as `loop.safetensors` + `loop.json` (steps done, loss log, batch positions, a method's generators and running
values), the saliency mask and `state.json` (what the run must match to resume). Nothing of the toolkit's is pickled:
a pickle runs code when it is read, so a state folder from elsewhere would be code from elsewhere. A folder that
holds the pickle older versions wrote (`custom_checkpoint_0.pkl`) is refused, never read.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from erase.errors import UsageError, option

STATE_PREFIX = "step-"  # OUT.checkpoint/step-0000120: the state after 120 steps
RESUME_MUST_MATCH = ("run", "steps", "seed", "num_processes", "grad_accum")  # or the resumed run would differ


def find_state(path: str | Path) -> Path:
    """The state folder `--resume path` names: `path` itself, or its latest complete step-N folder."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    states = sorted(path.glob(f"{STATE_PREFIX}*/state.json")) if path.is_dir() else []
    if not states:
        raise UsageError(f"{option('--resume')} {str(path)!r} holds no resumable state; pass the OUT.checkpoint folder that an "
                         "interrupted run (or --checkpoint-every) wrote, or one of its step-N folders")
    return states[-1].parent


LOOP_TENSORS, LOOP_JSON = "loop.safetensors", "loop.json"


def _encode(obj, tensors: dict[str, torch.Tensor]):
    """`obj` as JSON, its tensors moved into `tensors` (keyed by order) and left as {"__tensor__": key}."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"a resumable state holds tensors, numbers, strings, lists and dicts; got {type(obj).__name__}")


def _decode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    return obj


def save_tree(tree, folder: Path) -> None:
    """Write a nest of dicts, lists, tuples, tensors and plain values as `loop.safetensors` + `loop.json`."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, tensors)
    save_file(tensors, str(folder / LOOP_TENSORS))
    (folder / LOOP_JSON).write_text(json.dumps(encoded) + "\n")


def load_tree(folder: Path):
    """What `save_tree` wrote; nothing in it can run code."""
    from safetensors.torch import load_file

    return _decode(json.loads((folder / LOOP_JSON).read_text()), load_file(str(folder / LOOP_TENSORS)))



def _state_of(obj):
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    return obj.state_dict()


def _restore(obj, state) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state)
    elif isinstance(obj, dict):
        obj.clear()
        obj.update(state)
    elif isinstance(obj, list):
        obj[:] = state
    else:
        obj.load_state_dict(state)


class LoopState:
    """What a resumable state holds beside accelerate's own (weights, optimizer, random states): the steps done,
    the loss log, the monitor's history and each tracked object (batch streams' positions, a method's generator or
    running values). Written beside accelerate's files by `save_tree`, never pickled."""

    def __init__(self, log, tracked: dict, monitor, device=None):  # an engine.LossLog and engine.Monitor
        self.step, self.log, self.tracked, self.monitor, self.device = 0, log, tracked, monitor, device

    def state_dict(self) -> dict:
        return {"step": self.step, "log": self.log.state_dict(),
                "tracked": {name: _state_of(obj) for name, obj in self.tracked.items()},
                "monitor": list(self.monitor.history) if self.monitor is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if set(state["tracked"]) != set(self.tracked):
            raise UsageError(f"the resumed state tracks {sorted(state['tracked'])}, this run {sorted(self.tracked)}; "
                             "resume with the interrupted run's command and method")
        self.step = state["step"]
        self.log.load_state_dict(state["log"])
        for name, obj in self.tracked.items():
            _restore(obj, state["tracked"][name])
            if hasattr(obj, "to") and self.device is not None:  # e.g. an EMA model's shadow weights, loaded on the CPU
                obj.to(device=self.device)
        if self.monitor is not None and state["monitor"] is not None:
            self.monitor.history[:] = state["monitor"]


class Checkpoints:
    """Resumable states of one run in `folder`, through accelerate's `save_state` / `load_state`.

    Each state is written whole into `.step-N.partial` and then renamed to `step-N`, so a kill at any moment
    leaves the previous complete state; older states are removed once a newer one is complete. Every process
    writes its own random states into the same folder (multi-node runs need a folder all nodes share); the main
    process writes the rest.
    """

    def __init__(self, folder: str | Path, accelerator: Accelerator, identity: dict, mask: dict | None = None):
        self.folder, self.accelerator, self.identity, self.mask = Path(folder), accelerator, identity, mask
        self.latest: Path | None = None

    def save(self, loop_state: LoopState, step: int) -> Path:
        accelerator = self.accelerator
        final = self.folder / f"{STATE_PREFIX}{step:07d}"
        partial = self.folder / f".{final.name}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        loop_state.step = step
        accelerator.save_state(str(partial))
        if accelerator.is_main_process:
            save_tree(loop_state.state_dict(), partial)
            if self.mask is not None:
                self._write_mask(partial / "mask.safetensors")
            (partial / "state.json").write_text(json.dumps({**self.identity, "step": step, "saved": time.time()},
                                                           indent=2) + "\n")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():  # e.g. a resumed run stopped again at the step it resumed from
                shutil.rmtree(final)
            os.replace(partial, final)
            for old in self.folder.glob(f"{STATE_PREFIX}*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        self.latest = final
        return final

    def _write_mask(self, path: Path) -> None:
        previous = self.latest / "mask.safetensors" if self.latest is not None else None
        if previous is not None and previous.is_file():
            try:
                os.link(previous, path)  # the mask never changes during a run: share the file
                return
            except OSError:
                pass
        from erase.saliency import save_mask

        save_mask(self.mask, path)

    def load(self, path: str | Path, loop_state: LoopState) -> int:
        """Restore the state `path` names into the prepared model, optimizer and `loop_state`; the steps done."""
        state = find_state(path)
        saved = json.loads((state / "state.json").read_text())
        for key in RESUME_MUST_MATCH:
            if saved.get(key) != self.identity.get(key):
                raise UsageError(f"{option('--resume')} {str(path)!r} was saved by a run with {key} {saved.get(key)!r}, this run "
                                 f"has {self.identity.get(key)!r}; resume with the interrupted run's flags")
        pickled = sorted(p.name for p in state.glob("custom_checkpoint_*.pkl"))
        if pickled or not (state / LOOP_JSON).is_file():
            raise UsageError(f"{option('--resume')} {str(state)!r} holds {pickled[0] if pickled else 'no ' + LOOP_JSON}: it was "
                             "written by an older erase, whose state was a pickle, and erase does not read pickles (one "
                             "from elsewhere runs code). Start the run again without --resume")
        from accelerate.utils import load

        def refuse(name: str) -> UsageError:  # torch's own message is many lines; one names the file and the cause
            return UsageError(f"{option('--resume')} {str(state)!r}: {name} holds more than tensors and plain values "
                              "(reading it could run code), so it was not loaded; use a state folder erase wrote")

        for random_states in sorted(state.glob("random_states_*.pkl")):  # accelerate would skip a bad one silently
            try:
                load(random_states)  # weights_only=True: no code runs
            except pickle.UnpicklingError:
                raise refuse(random_states.name) from None
        try:
            self.accelerator.load_state(str(state))  # its optimizer and scheduler files: weights_only=True too
        except pickle.UnpicklingError:
            raise refuse("one of accelerate's files (optimizer, scheduler, scaler)") from None
        loop_state.load_state_dict(load_tree(state))
        self.latest = state
        return loop_state.step


