"""What the Python API accepts as a model, and what it gives back: a diffusers folder, or an in-memory diffusers
object (a `(UNet2DModel, scheduler)` pair, or a pipeline of a class an adapter in erase/pipelines reads:
`DDPMPipeline`, `DiTPipeline`, `StableDiffusionPipeline`, ...), opened as the backbone adapter the methods see,
and returned as the same kind of diffusers object (the adapter's `from_pipeline` and `to_pipeline`).

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
SHIPPED_TEXT_MODEL = SHIPPED_MODEL.parent / "styled-digits-t2i"  # the text-to-image model of styled digits

ACCEPTED = "a model folder, a (UNet2DModel, scheduler) pair or a diffusers pipeline of a supported class"


@dataclass
class OpenedModel:
    adapter: Any  # erase.pipelines adapter (what methods see)
    kind: str  # "folder" | "file" (a single-file checkpoint, erase/pipelines/single_file.py) | "pipeline" | "pair"
    source: Any  # the folder or file path, or the object passed in
    description: str  # for records: the folder or file path, or "in-memory StableDiffusionPipeline"

    @property
    def folder(self) -> Path | None:
        return Path(self.source) if self.kind == "folder" else None


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
    from erase.pipelines import BACKBONES

    return BACKBONES["cfg_unet" if unet.config.num_class_embeds else "ddpm"](unet, scheduler, info)


def open_model(model, *, copy_weights: bool = False, train_params: str | None = "full",
               model_config: str | os.PathLike | None = None) -> OpenedModel:
    """`model` as an adapter. `copy_weights`: train a copy of the denoiser, leaving the caller's object untouched
    (frozen parts, the VAE and text encoder, are shared, never trained). `train_params` None: for sampling only
    (a Stable Diffusion UNet's requires_grad flags are left as they are). `model_config`: the local diffusers folder
    whose configs read a single-file checkpoint `model` (a .safetensors path; kind "file", given back as the
    pipeline its adapter's `to_pipeline` makes)."""
    if isinstance(model, (str, os.PathLike)):
        from erase.pipelines.single_file import SINGLE_FILE_SUFFIXES, load_single_file

        path = Path(model)
        named_file = not path.exists() and path.suffix.lower() in SINGLE_FILE_SUFFIXES
        if model_config is not None or path.is_file() or named_file:
            return OpenedModel(load_single_file(model, model_config, train_params), "file", model, str(model))
        from erase.pipelines import load_adapter

        return OpenedModel(load_adapter(model), "folder", model, str(model))
    if model_config is not None:
        from erase.errors import option

        raise ModelError(f"{option('--model-config', 'model_config')} applies to a single-file checkpoint path; "
                         f"this model is an in-memory {type(model).__name__}: leave it out")
    own = (lambda module: copy.deepcopy(module)) if copy_weights else (lambda module: module)
    if isinstance(model, tuple) and len(model) == 2 and type(model[0]).__name__ == "UNet2DModel":
        unet, scheduler = model
        return OpenedModel(_unet_adapter(own(unet), scheduler, {}), "pair", model, "in-memory (UNet2DModel, scheduler)")
    from erase.pipelines import BACKBONES, backbone_of_pipeline, supported_pipelines

    backbone = backbone_of_pipeline(model) if hasattr(model, "components") else None
    if backbone is None:
        raise ModelError(f"cannot erase from a {type(model).__name__}; pass {ACCEPTED} "
                         f"({', '.join(supported_pipelines())})")
    adapter_class = BACKBONES[backbone]
    denoiser = own(getattr(model, adapter_class.trained_component))
    adapter = adapter_class.from_pipeline(model, denoiser, erase_info(model), train_params=train_params)
    return OpenedModel(adapter, "pipeline", model, f"in-memory {type(model).__name__}")


def to_diffusers(opened: OpenedModel):
    """The adapter's model as the kind of object `opened` came from: a pair for a pair, the same pipeline class for
    a pipeline (its other components shared), for a folder the pipeline plain `from_pretrained` gives for it
    (a classifier folder gives its adapter), and for a single file the pipeline of the adapter's parts. `_erase` facts
    go into the pipeline's config."""
    adapter = opened.adapter
    if opened.kind == "pair":
        return adapter.denoiser, adapter.scheduler
    if opened.kind == "pipeline":
        source = opened.source
        cls = type(source)
        kwargs = {**source.components, adapter.trained_component: adapter.denoiser}
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
    elif not adapter.generative:
        return adapter  # a classifier: its adapter saves the folder layout `erase` reads
    else:
        pipeline = adapter.to_pipeline()
    from erase.record import as_json

    pipeline.register_to_config(_erase=as_json(adapter.info))
    return pipeline
