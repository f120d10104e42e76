"""Backbone adapters: one file per backbone, one interface (`pipelines.base.DiffusionAdapter`)."""

from __future__ import annotations

import json
from pathlib import Path

from erase.errors import UsageError
from pipelines.cfg_unet import CFGUNetAdapter
from pipelines.base import ERASE_KEY, read_model_index
from pipelines.ddpm import DDPMAdapter
from pipelines.dit import DiTAdapter
from pipelines.stable_diffusion import StableDiffusionAdapter

BACKBONES = {
    "ddpm": DDPMAdapter,
    "cfg_unet": CFGUNetAdapter,
    "dit": DiTAdapter,
    "stable_diffusion": StableDiffusionAdapter,
}
PIPELINE_CLASSES = {"DiTPipeline": "dit", "StableDiffusionPipeline": "stable_diffusion"}


def load_adapter(directory: str | Path, **kwargs):
    """Open a model folder with the adapter its `_erase.backbone` names, or infer it from the UNet config."""
    index = read_model_index(directory)
    backbone = (index.get(ERASE_KEY) or {}).get("backbone")
    backbone = backbone or PIPELINE_CLASSES.get(index.get("_class_name"))
    if backbone is None:  # a public DDPM checkpoint: class-conditional iff the UNet has a class-embedding table
        unet_config = Path(directory) / "unet" / "config.json"
        has_classes = unet_config.is_file() and json.loads(unet_config.read_text()).get("num_class_embeds")
        backbone = "cfg_unet" if has_classes else "ddpm"
    if backbone not in BACKBONES:
        raise UsageError(f"{str(directory)!r} is a {backbone!r} model; this version supports {sorted(BACKBONES)}")
    return BACKBONES[backbone].from_pretrained(directory, **kwargs)
