"""Class-conditional UNet with classifier-free guidance (Ho & Salimans 2022).

A diffusers `UNet2DModel` with a class-embedding table of `num_classes + 1` rows: row `num_classes` is the
null label. Training drops labels to null with probability 0.1; sampling guides with
    eps = eps_null + s * (eps_c - eps_null)
so s = 1 is the plain conditional model and s = 0 the unconditional one. (The SFR-on DDPM code writes the
same rule as (1 + w) eps_c - w eps_null, i.e. s = 1 + w.) The chosen scale, the convention and the class
names are stored in the folder's `model_index.json` under `_erase`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import DDPMScheduler, UNet2DModel

from erase.errors import ModelError, OptionError
from erase.pipelines.ddpm import DDPMAdapter, tiny_unet_config

GUIDANCE_CONVENTION = "eps_null + s * (eps_c - eps_null)"


class ClassConditioning:
    """Class ids as conditions, with the null label at id `num_classes` (shared by the CFG UNet and DiT)."""

    num_classes: int

    def init_class_info(self) -> None:
        self.info.setdefault("class_names", [str(i) for i in range(self.num_classes)])
        self.info.setdefault("guidance_scale", 1.0)
        self.info["guidance_convention"] = GUIDANCE_CONVENTION
        self.info["null_class"] = self.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    def null_condition(self, batch_size: int) -> torch.Tensor:
        return torch.full((batch_size,), self.num_classes, dtype=torch.long, device=self.device)

    def check_class_ids(self, ids, allow_null: bool = False) -> None:
        """Refuse ids outside 0..num_classes-1 (the null id num_classes too, unless `allow_null`)."""
        top = self.num_classes if allow_null else self.num_classes - 1
        bad = sorted({int(c) for c in ids if not 0 <= int(c) <= top})
        if bad:
            raise OptionError(f"class ids {bad} do not exist; this model has classes 0-{self.num_classes - 1}")

    def condition_batch(self, conditions, device) -> torch.Tensor:
        labels = torch.as_tensor(conditions, dtype=torch.long, device=device)
        self.check_class_ids(labels.unique().tolist(), allow_null=True)
        return labels


class CFGUNetAdapter(ClassConditioning, DDPMAdapter):
    """Class-conditional UNet2DModel; a condition is a LongTensor of class ids."""

    backbone = "cfg_unet"
    conditional = True

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, info: dict | None = None):
        if not unet.config.num_class_embeds:
            raise ModelError("this UNet has no class embedding (num_class_embeds is unset); load it as a 'ddpm' model")
        super().__init__(unet, scheduler, info)
        self.init_class_info()

    @classmethod
    def create(cls, resolution: int, channels: Sequence[int] = (32, 64), in_channels: int = 1, num_classes=10,
               attention: bool = False, layers_per_block: int = 1, scheduler=None, **info):
        config = tiny_unet_config(resolution, channels, in_channels, attention, layers_per_block,
                                  num_class_embeds=num_classes + 1)
        unet = UNet2DModel(**config)
        return cls(unet, scheduler or DDPMScheduler(num_train_timesteps=1000), info)

    @property
    def num_classes(self) -> int:
        return self.denoiser.config.num_class_embeds - 1  # the last row is the null label

    def model_output(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x_t, timesteps, class_labels=condition).sample
