"""What the Python API accepts as a model, and what it gives back: a diffusers folder, or an in-memory diffusers
object (`DDPMPipeline` or a `(UNet2DModel, scheduler)` pair, `DiTPipeline`, `StableDiffusionPipeline`), opened
as the backbone adapter the methods see (erase/pipelines), and returned as the same kind of diffusers object.

erase's facts about a model (class names, guidance scale and convention, what was erased) travel in the
pipeline's config under `_erase` (a bare pair has no config: it samples at guidance 1 unless told otherwise), which `save_pretrained` writes into model_index.json, as the command line's
folders have them. A pipeline loaded with plain `from_pretrained` has no `_erase` in its config (diffusers drops
it), so they are read back from the model_index.json of the folder it was loaded from (`_name_or_path`).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from erase.errors import ModelError

SHIPPED_MODEL = Path(__file__).resolve().parent / "assets" / "mnist-cfg-unet"  # erase/assets/README.md: how it was made

# diffusers class (or a base of it) -> the component erasure trains
TRAINED_COMPONENT = {"DDPMPipeline": "unet", "DiTPipeline": "transformer", "StableDiffusionPipeline": "unet"}
ACCEPTED = "a model folder, a DDPMPipeline, a (UNet2DModel, scheduler) pair, a DiTPipeline or a StableDiffusionPipeline"


@dataclass
class OpenedModel:
    adapter: Any  # erase.pipelines adapter (what methods see)
    kind: str  # "folder" | "pipeline" | "pair"
    source: Any  # the folder path or the object passed in
    description: str  # for records: the folder path, or "in-memory StableDiffusionPipeline"

    @property
    def folder(self) -> Path | None:
        return Path(self.source) if self.kind == "folder" else None


def _pipeline_class(model) -> str | None:
    """The supported diffusers pipeline class `model` is (or derives from), by name: importing
    StableDiffusionPipeline only to test isinstance would cost an import the caller may not need."""
    names = {cls.__name__ for cls in type(model).__mro__}
    return next((name for name in TRAINED_COMPONENT if name in names), None)


def erase_info(pipeline) -> dict:
    """A pipeline's `_erase` facts: from its config, else from the folder it was loaded from, else {}."""
    info = pipeline.config.get("_erase")
    if info is None:
        origin = pipeline.config.get("_name_or_path")
        index = Path(origin) / "model_index.json" if origin else None
        if index is not None and index.is_file():
            try:
                info = json.loads(index.read_text()).get("_erase")
            except (json.JSONDecodeError, UnicodeDecodeError):
                info = None
    return copy.deepcopy(dict(info or {}))


def _unet_adapter(unet, scheduler, info: dict):
    from erase.pipelines.cfg_unet import CFGUNetAdapter
    from erase.pipelines.ddpm import DDPMAdapter

    return (CFGUNetAdapter if unet.config.num_class_embeds else DDPMAdapter)(unet, scheduler, info)


def open_model(model, *, copy_weights: bool = False, train_params: str | None = "full") -> OpenedModel:
    """`model` as an adapter. `copy_weights`: train a copy of the denoiser, leaving the caller's object untouched
    (frozen parts, the VAE and text encoder, are shared, never trained). `train_params` None: for sampling only
    (a Stable Diffusion UNet's requires_grad flags are left as they are)."""
    if isinstance(model, (str, os.PathLike)):
        from erase.pipelines import load_adapter

        return OpenedModel(load_adapter(model), "folder", model, str(model))
    own = (lambda module: copy.deepcopy(module)) if copy_weights else (lambda module: module)
    if isinstance(model, tuple) and len(model) == 2 and type(model[0]).__name__ == "UNet2DModel":
        unet, scheduler = model
        return OpenedModel(_unet_adapter(own(unet), scheduler, {}), "pair", model, "in-memory (UNet2DModel, scheduler)")
    kind = _pipeline_class(model)
    if kind is None:
        raise ModelError(f"cannot erase from a {type(model).__name__}; pass {ACCEPTED}")
    info = erase_info(model)
    description = f"in-memory {type(model).__name__}"
    if kind == "DDPMPipeline":
        adapter = _unet_adapter(own(model.unet), model.scheduler, info)
    elif kind == "DiTPipeline":
        from erase.pipelines.dit import DiTAdapter

        labels = getattr(model, "labels", None) or {}  # DiTPipeline(id2label=...): {name: id}
        if "class_names" not in info and labels:
            names = {int(i): name for name, i in labels.items()}
            info["class_names"] = [names.get(i, str(i)) for i in range(model.transformer.config.num_embeds_ada_norm)]
        adapter = DiTAdapter(own(model.transformer), model.vae, model.scheduler, info)
    else:
        from erase.pipelines.stable_diffusion import StableDiffusionAdapter

        adapter = StableDiffusionAdapter(own(model.unet), model.vae, model.text_encoder, model.tokenizer, model.scheduler,
                                         info, train_params=train_params)
    return OpenedModel(adapter, "pipeline", model, description)


def to_diffusers(opened: OpenedModel):
    """The adapter's model as the kind of object `opened` came from: a pair for a pair, the same pipeline class for
    a pipeline (its other components shared), and for a folder the pipeline plain `from_pretrained` gives for it
    (a classifier folder gives its adapter). `_erase` facts go into the pipeline's config."""
    adapter = opened.adapter
    if opened.kind == "pair":
        return adapter.denoiser, adapter.scheduler
    if opened.kind == "pipeline":
        source = opened.source
        cls = type(source)
        kwargs = {**source.components, TRAINED_COMPONENT[_pipeline_class(source)]: adapter.denoiser}
        parameters = inspect.signature(cls.__init__).parameters
        for name in parameters:  # config arguments, e.g. requires_safety_checker
            if name not in kwargs and name in source.config and not name.startswith("_"):
                kwargs[name] = source.config[name]
        if "id2label" in parameters and getattr(source, "labels", None):  # DiTPipeline keeps {name: id} only
            names: dict[int, list[str]] = {}
            for name, index in source.labels.items():
                names.setdefault(int(index), []).append(name)
            kwargs["id2label"] = {index: ", ".join(n) for index, n in names.items()}
        pipeline = cls(**{k: v for k, v in kwargs.items() if k in parameters})
    elif adapter.backbone in ("ddpm", "cfg_unet"):
        from diffusers import DDPMPipeline

        pipeline = DDPMPipeline(unet=adapter.denoiser, scheduler=adapter.scheduler)
    elif adapter.backbone == "dit":
        from diffusers import DiTPipeline

        pipeline = DiTPipeline(transformer=adapter.denoiser, vae=adapter.vae.vae, scheduler=adapter.scheduler)
    elif adapter.backbone == "stable_diffusion":
        from diffusers import StableDiffusionPipeline

        pipeline = StableDiffusionPipeline(
            vae=adapter.vae.vae, text_encoder=adapter.text_encoder, tokenizer=adapter.tokenizer, unet=adapter.denoiser,
            scheduler=adapter.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        return adapter  # a classifier: its adapter saves the folder layout `erase` reads
    from erase.record import as_json

    pipeline.register_to_config(_erase=as_json(adapter.info))
    return pipeline
