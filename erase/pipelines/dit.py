"""DiT (Peebles & Xie 2023): diffusers `DiTTransformer2DModel` + `AutoencoderKL` + scheduler, as in `DiTPipeline`.

Reads and writes the `DiTPipeline` folder layout (facebook/DiT-XL-2-256 when the user has it locally):
`model_index.json`, `transformer/`, `vae/`, `scheduler/`. Latents are the VAE's, scaled by its `scaling_factor`.
Null class for guidance = `num_embeds_ada_norm` (1000 for ImageNet; `DiTPipeline` hard-codes that id).

The transformer predicts noise and a learned variance (out_channels = 2 x latent channels). Erasure trains the
noise half only (the simple L_simple loss DiT's own training adds to the variational term): the variance half
gets no gradient, so it stays as trained. Only the transformer trains; the VAE is frozen and copied byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiTPipeline, DiTTransformer2DModel

from erase.errors import ModelError
from erase.pipelines.base import ERASE_KEY, AdapterBase, load_scheduler, read_model_index
from erase.pipelines.cfg_unet import ClassConditioning
from erase.pipelines.latent import FrozenVAE


class DiTAdapter(ClassConditioning, AdapterBase):
    backbone = "dit"
    conditional = True
    pipeline_class = "DiTPipeline"
    trained_component = "transformer"

    def __init__(self, transformer: DiTTransformer2DModel, vae, scheduler, info: dict | None = None,
                 source: Path | None = None):
        super().__init__(transformer, scheduler, info)
        self.vae = FrozenVAE(vae)
        self.source = source  # the folder whose VAE and scheduler files are copied on save
        self.init_class_info()

    @property
    def num_classes(self) -> int:
        return self.denoiser.config.num_embeds_ada_norm

    @property
    def latent_channels(self) -> int:
        return self.denoiser.config.in_channels

    def model_output(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        out = self.denoiser(x_t, timestep=timesteps, class_labels=condition).sample  # (N, 2C, h, w) with learned sigma
        return out[:, : self.latent_channels]

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs):
        index = read_model_index(directory)
        directory = Path(directory)
        if not (directory / "transformer").is_dir() or not (directory / "vae").is_dir():
            raise ModelError(f"{str(directory)!r} is not a DiT pipeline folder (needs transformer/ and vae/)")
        from diffusers import AutoencoderKL

        transformer = DiTTransformer2DModel.from_pretrained(directory, subfolder="transformer", **kwargs)
        vae = AutoencoderKL.from_pretrained(directory, subfolder="vae")
        info = index.get(ERASE_KEY) or {}
        if "class_names" not in info and index.get("id2label"):
            info["class_names"] = [index["id2label"].get(str(i), str(i)) for i in range(transformer.config.num_embeds_ada_norm)]
        return cls(transformer, vae, load_scheduler(directory), info, source=directory)

    @classmethod
    def from_pipeline(cls, pipeline, denoiser, info: dict, **kwargs):
        """An in-memory DiTPipeline, training `denoiser`; its labels ({name: id}) become the class names."""
        labels = getattr(pipeline, "labels", None) or {}
        if "class_names" not in info and labels:
            names = {int(i): name for name, i in labels.items()}
            info["class_names"] = [names.get(i, str(i)) for i in range(denoiser.config.num_embeds_ada_norm)]
        return cls(denoiser, pipeline.vae, pipeline.scheduler, info)

    def to_pipeline(self):
        return DiTPipeline(transformer=self.denoiser, vae=self.vae.vae, scheduler=self.scheduler)


def tiny_dit(sample_size: int = 4, latent_channels: int = 4, num_classes: int = 1000) -> DiTTransformer2DModel:
    """A 2-layer DiT for tests (1000 classes because DiTPipeline hard-codes null id 1000)."""
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=latent_channels, out_channels=2 * latent_channels,
        num_layers=2, sample_size=sample_size, patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=8,
    )
