"""Stable Diffusion 1.x and 2.x: `UNet2DConditionModel` + `CLIPTextModel`/`CLIPTokenizer` + `AutoencoderKL` + scheduler.

Reads a local `StableDiffusionPipeline` folder; writes a full one in which only `unet/` is new and every other
file is copied byte for byte. The text encoder and VAE are frozen. The training target follows the scheduler's
`prediction_type` (SD 1.x: epsilon; SD 2.x 768 px: v_prediction; erase/pipelines/targets.py). Which UNet
parameters train: `full`, `xattn` (cross-attention `attn2`, ESD-x) or `noxattn` (everything but cross-attention,
the time embedding and the output layers, ESD-u); prompts are conditions (erase/pipelines/text.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import UNet2DConditionModel

from erase.pipelines.base import AdapterBase
from erase.pipelines.cfg_unet import GUIDANCE_CONVENTION
from erase.pipelines.latent import FrozenVAE
from erase.pipelines.text import PromptConditioning

UNET_OUTPUT_LAYERS = ("time_embedding", "conv_out", "conv_norm_out")


class StableDiffusionAdapter(PromptConditioning, AdapterBase):
    backbone = "stable_diffusion"
    text_encoder_names = ('text_encoder',)
    pipeline_class = "StableDiffusionPipeline"
    output_layers = UNET_OUTPUT_LAYERS
    text_attention_rule = "cross-attention (attn2)"

    def __init__(self, unet: UNet2DConditionModel, vae, text_encoder, tokenizer, scheduler, info: dict | None = None,
                 source: Path | None = None, train_params: str | None = "full"):
        super().__init__(unet, scheduler, info)
        self.vae = FrozenVAE(vae) if vae is not None else None  # None: a pixel-space text-conditional UNet
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.source = source
        self.info.setdefault("guidance_scale", 7.5)  # StableDiffusionPipeline's default
        # a pixel-space model is one of the small ones `erase train` makes: the methods' pixel_text presets apply
        self.preset = "pixel_text" if self.vae is None else None
        self.info["guidance_convention"] = GUIDANCE_CONVENTION
        self.init_prompts()
        if train_params is not None:  # None: sampling only, the UNet's requires_grad flags stay as they are
            self.select_trainable(train_params)

    def text_attention(self, name: str) -> bool:
        return "attn2" in name

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Frozen CLIP last hidden states, (N, max_length, D), as StableDiffusionPipeline conditions the UNet."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return {"encoder_hidden_states": self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]}

    def model_output(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition) -> torch.Tensor:
        return self.denoiser(x_t, timesteps, **self.embed(condition)).sample

    @classmethod
    def create_pixel_model(cls, resolution: int, in_channels: int, scheduler, scratch: str | Path,
                           channels: Sequence[int] = (32, 64), max_length: int = 32, text_width: int = 32,
                           words: Sequence[str] = (), **info) -> "StableDiffusionAdapter":
        """A text-conditional pixel-space model built from configs (seed torch first): a tiny UNet2DConditionModel
        with cross-attention on a frozen random CLIP text encoder of `text_width` dimensions reading `max_length`
        tokens (erase train --conditioning text): characters, and `words` as whole-word tokens. It has no VAE; its
        folder is a StableDiffusionPipeline folder with vae null."""
        text_encoder, tokenizer = tiny_text_encoder(scratch, max_length, text_width, words)
        unet = tiny_unet_condition(resolution, in_channels, text_encoder.config.hidden_size, channels)
        return cls(unet, None, text_encoder, tokenizer, scheduler, info)

    @classmethod
    def from_pipeline(cls, pipeline, denoiser, info: dict, train_params: str | None = "full"):
        """An in-memory StableDiffusionPipeline, training `denoiser`; the VAE and text encoder are shared."""
        return cls(denoiser, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer, pipeline.scheduler, info,
                   train_params=train_params)

    def to_pipeline(self):
        """A StableDiffusionPipeline of the adapter's parts (vae None for a pixel-space model: plain diffusers saves
        it and loads it with `from_pretrained(folder, vae=None)`, and erase samples it)."""
        from diffusers import StableDiffusionPipeline  # imported late: its import warns about torchvision

        return StableDiffusionPipeline(
            vae=None if self.vae is None else self.vae.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.denoiser,
            scheduler=self.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_text_encoder(directory: str | Path, max_length: int = 32, hidden_size: int = 32, words: Sequence[str] = ()):
    """A random-init CLIP text model (2 layers, 32-d) and a character-level CLIP tokenizer written to `directory`:
    the frozen text side of erase train's text-conditional digit models and of the tests (seed torch first)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from erase.pipelines.text import write_character_vocabulary

    folder = write_character_vocabulary(Path(directory), words)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size,
        intermediate_size=37 if hidden_size == 32 else 2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    return text_encoder, tokenizer


def tiny_unet_condition(sample_size: int = 8, in_channels: int = 4, cross_attention_dim: int = 32,
                        channels: Sequence[int] = (32, 64)) -> UNet2DConditionModel:
    """A small UNet2DConditionModel: a plain first level, cross-attention on every lower one (two levels: tests and
    the 16 px digit text model; three: the styled digits), as erase train --conditioning text builds it."""
    levels = len(channels)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
        block_out_channels=tuple(channels), down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=8,
    )
