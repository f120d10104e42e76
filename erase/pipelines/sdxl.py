"""Stable Diffusion XL: `UNet2DConditionModel` (addition_embed_type "text_time") + two CLIP text encoders
(`CLIPTextModel`, `CLIPTextModelWithProjection`) and their tokenizers + `AutoencoderKL` + scheduler.

Reads a local `StableDiffusionXLPipeline` folder; writes a full one in which only `unet/` is new and every other
file is copied byte for byte. The text encoders and VAE are frozen. Prompts are encoded by diffusers' own
`StableDiffusionXLPipeline.encode_prompt` (penultimate hidden states of both encoders concatenated, and the second
encoder's pooled projection), so a condition embeds as {"prompt_embeds": (N, L, D1 + D2), "pooled": (N, P)}. The UNet
also takes the micro-conditioning `time_ids` = (original size, crop top-left, target size) = (H, W, 0, 0, H, W) at the
model's native resolution, which is what the pipeline passes when called without those arguments.

The null condition (prompt id 0, the empty prompt) is what the pipeline itself guides against when it is given no
negative prompt: zeros for both tensors when the pipeline config sets `force_zeros_for_empty_prompt` (the default
and SDXL base's setting; SDXL was trained with conditioning dropped to zeros), else the empty prompt's encoding. So
erasure targets (ESD's guided target, label dropout), erase's sampler and the saved pipeline all use the same null.
An empty prompt passed as a prompt means the same null.

The training target follows the scheduler's `prediction_type` (SDXL base: EulerDiscreteScheduler, epsilon); erase
samples with DDIM from the same config (erase/pipelines/targets.py). `--train-params`: `xattn` trains the
cross-attention `attn2` (ESD-x); `noxattn` everything else but the time embedding, the added text-time embedding
(`add_embedding`, which SDXL adds to the time embedding) and the output layers (ESD-u).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import UNet2DConditionModel

from erase.errors import ModelError
from erase.pipelines.base import AdapterBase
from erase.pipelines.cfg_unet import GUIDANCE_CONVENTION
from erase.pipelines.latent import FrozenVAE
from erase.pipelines.stable_diffusion import UNET_OUTPUT_LAYERS
from erase.pipelines.text import PromptConditioning


class StableDiffusionXLAdapter(PromptConditioning, AdapterBase):
    backbone = "sdxl"
    text_encoder_names = ('text_encoder', 'text_encoder_2')
    pipeline_class = "StableDiffusionXLPipeline"
    trained_component = "unet"
    preset = "stable_diffusion"  # the Stable Diffusion method presets apply
    default_data = "generated"
    output_layers = (*UNET_OUTPUT_LAYERS, "add_embedding")
    text_attention_rule = "cross-attention (attn2)"

    def __init__(self, unet: UNet2DConditionModel, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
                 scheduler, info: dict | None = None, source: Path | None = None, train_params: str | None = "full",
                 force_zeros_for_empty_prompt: bool = True):
        super().__init__(unet, scheduler, info)
        if unet.config.addition_embed_type != "text_time":
            raise ModelError(f"an SDXL UNet takes addition_embed_type 'text_time' (pooled text and size ids); this one "
                             f"has {unet.config.addition_embed_type!r} (unet/config.json)")
        self.vae = FrozenVAE(vae)
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.text_encoder_2 = text_encoder_2.requires_grad_(False).eval()
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.source = source
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self.info.setdefault("guidance_scale", 5.0)  # StableDiffusionXLPipeline's default
        self.info["guidance_convention"] = GUIDANCE_CONVENTION
        self.info["null_condition"] = ("zeros (force_zeros_for_empty_prompt)" if self.force_zeros_for_empty_prompt
                                       else "the empty prompt's encoding")
        # the pipeline's own prompt encoder and size ids; this pipeline object holds only the frozen text parts (the
        # UNet may be wrapped or replaced while training, so only the size-id check below sees it)
        self.prompt_pipeline = self.pipeline(unet=None, vae=None, scheduler=None, add_watermarker=False)
        _, height, width = self.image_shape
        self.add_time_ids = self.pipeline(unet=unet, add_watermarker=False)._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=torch.float32,
            text_encoder_projection_dim=self.text_encoder_2.config.projection_dim)  # (1, 6); checks the UNet's
        # add_embedding width against 6 * addition_time_embed_dim + the pooled width
        self.init_prompts()
        if train_params is not None:  # None: sampling only, the UNet's requires_grad flags stay as they are
            self.select_trainable(train_params)

    def pipeline(self, **components):
        """A StableDiffusionXLPipeline over this adapter's parts (`components` replace some)."""
        from diffusers import StableDiffusionXLPipeline  # imported late: its import warns about torchvision

        parts = dict(vae=self.vae.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                     tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.denoiser,
                     scheduler=self.scheduler, force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt)
        return StableDiffusionXLPipeline(**{**parts, **components})

    def text_attention(self, name: str) -> bool:
        return "attn2" in name

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """StableDiffusionXLPipeline.encode_prompt's (prompt_embeds (N, L, D1 + D2), pooled (N, P)); the empty prompt
        is the pipeline's unconditional input (zeros under force_zeros_for_empty_prompt, see the module docstring)."""
        prompts = list(prompts)
        prompt_embeds, _, pooled, _ = self.prompt_pipeline.encode_prompt(
            prompts, device=self.text_encoder_2.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        if self.force_zeros_for_empty_prompt:
            keep = torch.tensor([p != "" for p in prompts], device=prompt_embeds.device)
            prompt_embeds = prompt_embeds * keep[:, None, None].to(prompt_embeds.dtype)  # (N, L, D)
            pooled = pooled * keep[:, None].to(pooled.dtype)  # (N, P)
        return {"prompt_embeds": prompt_embeds, "pooled": pooled}

    def model_output(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition) -> torch.Tensor:
        embedded = self.embed(condition)
        if self.add_time_ids.device != x_t.device:  # moved once, not copied to the device on every step
            self.add_time_ids = self.add_time_ids.to(x_t.device)
        time_ids = self.add_time_ids.expand(x_t.shape[0], -1)  # (N, 6), as the pipeline batches them
        added_cond_kwargs = {"text_embeds": embedded["pooled"], "time_ids": time_ids}
        return self.denoiser(x_t, timesteps, encoder_hidden_states=embedded["prompt_embeds"],
                             added_cond_kwargs=added_cond_kwargs).sample

    @classmethod
    def folder_options(cls, index: dict) -> dict:
        return {"force_zeros_for_empty_prompt": index.get("force_zeros_for_empty_prompt", True)}

    @classmethod
    def from_pipeline(cls, pipeline, denoiser, info: dict, train_params: str | None = "full"):
        """An in-memory StableDiffusionXLPipeline, training `denoiser`; the VAE and text encoders are shared."""
        return cls(denoiser, pipeline.vae, pipeline.text_encoder, pipeline.text_encoder_2, pipeline.tokenizer,
                   pipeline.tokenizer_2, pipeline.scheduler, info, train_params=train_params,
                   force_zeros_for_empty_prompt=pipeline.config.get("force_zeros_for_empty_prompt", True))

    def to_pipeline(self):
        return self.pipeline()
