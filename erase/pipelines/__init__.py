"""Backbone adapters: one file per backbone, one interface (`erase.pipelines.base.DiffusionAdapter`; image classifiers,
`erase.pipelines.classifier`, give per-sample losses instead of noise predictions)."""

from __future__ import annotations

import json
from pathlib import Path

from erase.errors import ModelError
from erase.pipelines.cfg_unet import CFGUNetAdapter
from erase.pipelines.classifier import ClassifierAdapter
from erase.pipelines.base import ERASE_KEY, REPAIR, check_model_folder, read_model_index
from erase.pipelines.ddpm import DDPMAdapter
from erase.pipelines.dit import DiTAdapter
from erase.pipelines.flux import FluxAdapter
from erase.pipelines.sdxl import StableDiffusionXLAdapter
from erase.pipelines.sd3 import StableDiffusion3Adapter
from erase.pipelines.stable_diffusion import StableDiffusionAdapter

# One entry per backbone file: a new backbone is its file plus its line here (its adapter declares the diffusers
# pipeline class it reads and writes, the component it trains, and from_pretrained / from_pipeline / to_pipeline).
BACKBONES = {
    "ddpm": DDPMAdapter,
    "cfg_unet": CFGUNetAdapter,
    "dit": DiTAdapter,
    "flux": FluxAdapter,
    "stable_diffusion": StableDiffusionAdapter,
    "sd3": StableDiffusion3Adapter,
    "sdxl": StableDiffusionXLAdapter,
    "classifier": ClassifierAdapter,
}
UNET_PIPELINE = "DDPMPipeline"  # unconditional, or class-conditional when the UNet has a class-embedding table
PIPELINE_CLASSES = {cls.pipeline_class: name for name, cls in BACKBONES.items()
                    if getattr(cls, "pipeline_class", None) not in (None, UNET_PIPELINE)}


def backbone_of_pipeline(pipeline) -> str | None:
    """The backbone name of an in-memory diffusers pipeline (its class or a base class of it), or None."""
    names = [cls.__name__ for cls in type(pipeline).__mro__]
    for name in names:
        if name == UNET_PIPELINE:
            return "cfg_unet" if pipeline.unet.config.num_class_embeds else "ddpm"
        if name in PIPELINE_CLASSES:
            return PIPELINE_CLASSES[name]
    return None


def supported_pipelines() -> list[str]:
    return sorted([UNET_PIPELINE, *PIPELINE_CLASSES])


def load_adapter(directory: str | Path, **kwargs):
    """Open a model folder with the adapter its `_erase.backbone` names, or infer it from the UNet config."""
    index = read_model_index(directory)
    backbone = (index.get(ERASE_KEY) or {}).get("backbone")
    backbone = backbone or PIPELINE_CLASSES.get(index.get("_class_name"))
    if backbone is None and index.get("_class_name") != UNET_PIPELINE:
        raise ModelError(f"model folder {str(directory)!r} holds a {index.get('_class_name')!r} pipeline "
                         f"(model_index.json _class_name); erase supports {supported_pipelines()}: "
                         "pass a model folder of one of those")
    check_model_folder(directory, index)
    if backbone is None:  # a public DDPM checkpoint: class-conditional iff the UNet has a class-embedding table
        unet_config = Path(directory) / "unet" / "config.json"
        has_classes = unet_config.is_file() and json.loads(unet_config.read_text()).get("num_class_embeds")
        backbone = "cfg_unet" if has_classes else "ddpm"
    if backbone not in BACKBONES:
        raise ModelError(f"model folder {str(directory)!r} is a {backbone!r} model (model_index.json _erase.backbone); "
                         f"erase supports {sorted(BACKBONES)}: pass a model folder of one of those")
    try:
        return BACKBONES[backbone].from_pretrained(directory, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:  # what diffusers and torch raise for
        # files that parse but do not fit (a config naming other layers, weights of another shape)
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0][:300]
        raise ModelError(f"model folder {str(directory)!r} cannot be loaded as a {backbone} model ({detail}); "
                         f"{REPAIR}") from None
