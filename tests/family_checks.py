"""The acceptance every text-to-image family passes, written once: erase a prompt through the CLI from a
saved folder and through `erase.unlearn` from the in-memory pipeline; the output loads in the family's plain diffusers
pipeline class and generates; only the denoiser changed; the input folder is untouched; run.json names the target."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import erase
from erase.cli.main import main
from tests.conftest import tree_digest

FAST_FLAGS = ["--steps", "2", "--batch-size", "1", "--fisher-batches", "1", "--images-per-condition", "1",
              "--generation-steps", "2"]
FAST = dict(steps=2, batch_size=1, fisher_batches=1, images_per_condition=1, generation_steps=2)
FORGET, RETAIN = "a photo of a cat", "a photo of a dog"


def state(module: torch.nn.Module) -> dict:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_family(pipeline, tmp_path: Path, trained: str, prediction_type: str, sample_kwargs: dict | None = None,
                 method: str = "sfron") -> dict:
    """Run the acceptance on `pipeline` (a tiny random pipeline of the family); `trained` names its denoiser
    component. Returns the CLI's run.json."""
    cls = type(pipeline)
    sample_kwargs = {"num_inference_steps": 2, "guidance_scale": 2.0, "output_type": "np", **(sample_kwargs or {})}
    source = tmp_path / "source"
    pipeline.save_pretrained(source)
    digest = tree_digest(source)
    before = state(getattr(pipeline, trained))

    # the command line, from the saved folder
    out = tmp_path / "erased"
    code = main(["unlearn", "--model", str(source), "--forget-prompt", FORGET, "--remain-prompt", RETAIN,
                 "--method", method, "--out", str(out), *FAST_FLAGS])
    assert code in (0, None)
    assert tree_digest(source) == digest  # the input folder is untouched
    record = json.loads((out / "run.json").read_text())
    assert record["training_target"]["prediction_type"] == prediction_type
    old, new = files(source), files(out)
    changed = {name for name in old if new.get(name) != old[name]}
    assert changed and all(name.startswith(f"{trained}/") or name == "model_index.json" for name in changed), changed
    reloaded = cls.from_pretrained(out)
    assert not same(state(getattr(reloaded, trained)), before)  # the denoiser was trained
    image = reloaded(FORGET, generator=torch.Generator().manual_seed(0), **sample_kwargs).images
    assert image.ndim == 4 and image.shape[0] == 1 and bool(((image >= 0) & (image <= 1)).all())

    # the Python API, on the in-memory pipeline
    erased, api_record = erase.unlearn(pipeline, forget=FORGET, remain=[RETAIN], method=method, **FAST)
    assert type(erased) is cls and erased is not pipeline
    assert same(state(getattr(pipeline, trained)), before)  # the caller's object is untouched
    assert not same(state(getattr(erased, trained)), before)
    assert api_record["training_target"] == record["training_target"]
    image = erased(FORGET, generator=torch.Generator().manual_seed(0), **sample_kwargs).images
    assert image.ndim == 4 and bool(((image >= 0) & (image <= 1)).all())
    images, _ = erase.sample(erased, prompts=[FORGET], n_per_condition=1, steps=2)
    assert images.ndim == 4 and images.shape[0] == 1
    return record
