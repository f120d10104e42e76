"""Flux.1 (Black Forest Labs 2024): `FluxTransformer2DModel` + CLIP and T5 text encoders + `AutoencoderKL`, as in
`FluxPipeline`.

Reads a local `FluxPipeline` folder (transformer, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
scheduler); writes a full one in which only `transformer/` is new and every other file is copied byte for byte. The
text encoders and VAE are frozen. Training target: rectified flow, velocity eps - x0 (erase/pipelines/targets.py), with
the resolution-dependent sampling shift of the folder's `FlowMatchEulerDiscreteScheduler` (`use_dynamic_shifting`).

Conventions, each as diffusers' `FluxPipeline` and its Flux training scripts (train_dreambooth_flux.py) have them:

- Latents: `(z - shift_factor) * scaling_factor` of the VAE's posterior sample. The adapter keeps them unpacked,
  (N, C, h, w), so the sampler and every method see ordinary image latents; `model_output` packs them into 2x2 patch
  tokens (N, h/2 * w/2, 4C) with `FluxPipeline._pack_latents` for the transformer and unpacks its output.
  `image_seq_len` = h/2 * w/2 sets the sampler's dynamic shift mu, as the pipeline computes it.
- Conditioning: `FluxPipeline.encode_prompt` itself: T5 token embeddings (N, max_sequence_length, D) and the pooled
  CLIP vector (N, P). Id 0, the empty prompt, is the null condition (what the pipeline's true CFG would use).
- Guidance: Flux.1-dev is guidance-distilled (`guidance_embeds`): the transformer takes the guidance scale as an input
  and is sampled without classifier-free guidance. erase feeds it `info["distilled_guidance"]` (3.5, FluxPipeline's
  default `guidance_scale` and the training scripts' `--guidance_scale`) in training and sampling alike, and keeps
  `info["guidance_scale"]` (erase's own CFG, out_null + s (out_c - out_null)) at 1, so erase samples as the pipeline
  does; a larger scale is true CFG on top, as the pipeline's `true_cfg_scale`. Flux.1-schnell (no guidance
  embedding) gets no guidance input and also samples at CFG scale 1.
- Resolution: square images of `info["image_size"]` pixels (default FluxPipeline's 1024 for an 8x VAE) and T5
  prompts of `info["max_sequence_length"]` tokens (default the pipeline's 512); a folder's `_erase` may record smaller.

`--train-params xattn` trains the attention of every block: in Flux's double-stream blocks text and image tokens
attend jointly (image to_q/k/v/out and text add_q/k/v_proj/to_add_out), and in its single-stream blocks one attention
reads the concatenated text and image tokens, so every attention reads the text (erase/pipelines/text.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import FluxTransformer2DModel

from erase.errors import ModelError
from erase.pipelines.base import AdapterBase
from erase.pipelines.latent import FrozenVAE
from erase.pipelines.targets import FlowMatching
from erase.pipelines.text import PromptConditioning

# ESD-u's frozen layers besides the attention: the time, guidance and pooled-text embedders (time_text_embed), the
# T5 token projection (context_embedder, which reads only text), and the output norm and projection
FLUX_OUTPUT_LAYERS = ("time_text_embed", "context_embedder", "norm_out", "proj_out")
DISTILLED_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale, the embedded guidance Flux.1-dev is sampled at
DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline.default_sample_size: latent pixels of its default image (1024 px at 8x)
MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's default (and largest) T5 prompt length


class FluxAdapter(PromptConditioning, AdapterBase):
    backbone = "flux"
    text_encoder_names = ('text_encoder', 'text_encoder_2')
    pipeline_class = "FluxPipeline"
    trained_component = "transformer"
    preset = "stable_diffusion"  # text-to-image presets
    default_data = "generated"
    output_layers = FLUX_OUTPUT_LAYERS
    text_attention_rule = ("the attention of every block, which reads text and image tokens jointly "
                           "(transformer_blocks.*.attn.* and single_transformer_blocks.*.attn.*)")

    def __init__(self, transformer: FluxTransformer2DModel, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 scheduler, info: dict | None = None, source: Path | None = None, train_params: str | None = "full"):
        super().__init__(transformer, scheduler, info)
        if not isinstance(self.parameterization, FlowMatching):
            raise ModelError(f"a Flux transformer is a flow-matching model; its scheduler is a "
                             f"{type(scheduler).__name__} (use FlowMatchEulerDiscreteScheduler in "
                             "scheduler/scheduler_config.json)")
        self.vae = FrozenVAE(vae)  # subtracts the VAE's shift_factor before scaling, as FluxPipeline
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.text_encoder_2 = text_encoder_2.requires_grad_(False).eval()
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.source = source
        # guidance-distilled models are sampled without CFG (FluxPipeline's true_cfg_scale 1): erase's CFG scale is 1
        self.info.setdefault("guidance_scale", 1.0)
        self.info["guidance_convention"] = "out_null + s * (out_c - out_null), s = guidance_scale (true CFG)"
        if transformer.config.guidance_embeds:
            self.info.setdefault("distilled_guidance", DISTILLED_GUIDANCE)
        else:
            self.info["distilled_guidance"] = None  # Flux.1-schnell: no guidance input
        self.info.setdefault("image_size", DEFAULT_SAMPLE_SIZE * self.vae.scale_factor)
        self.info.setdefault("max_sequence_length", MAX_SEQUENCE_LENGTH)
        patch = 2 * self.vae.scale_factor  # FluxPipeline.check_inputs: 2x2 latent patches
        if int(self.info["image_size"]) % patch:
            raise ModelError(f"Flux image_size {self.info['image_size']} (model_index.json _erase) must be a multiple "
                             f"of {patch} (the VAE's {self.vae.scale_factor}x times the 2x2 latent patches)")
        self.init_prompts()
        if train_params is not None:  # None: sampling only, the transformer's requires_grad flags stay as they are
            self.select_trainable(train_params)

    def text_attention(self, name: str) -> bool:
        return name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and ".attn." in name

    def text_pipeline(self):
        """A FluxPipeline holding only the frozen text encoders and tokenizers, for its `encode_prompt`."""
        from diffusers import FluxPipeline  # imported late: its import warns about torchvision

        return FluxPipeline(scheduler=self.scheduler, vae=None, text_encoder=self.text_encoder,
                            tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
                            transformer=None)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """FluxPipeline.encode_prompt: T5 token embeddings (N, L, D) and the pooled CLIP embedding (N, P)."""
        prompt_embeds, pooled, _ = self.text_pipeline().encode_prompt(
            list(prompts), device=self.text_encoder_2.device, max_sequence_length=int(self.info["max_sequence_length"]))
        return {"prompt_embeds": prompt_embeds, "pooled": pooled}

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = 2 * (int(self.info["image_size"]) // (2 * self.vae.scale_factor))  # FluxPipeline.prepare_latents
        return self.denoiser.config.in_channels // 4, size, size

    @property
    def image_seq_len(self) -> int:
        """Tokens per image after 2x2 packing: the sampler's dynamic shift mu grows with it."""
        _, height, width = self.latent_shape
        return (height // 2) * (width // 2)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = int(self.info["image_size"])
        return self.vae.vae.config.in_channels, size, size

    def model_output(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition) -> torch.Tensor:
        """The transformer's velocity at (x_t, t, c), called as FluxPipeline's denoising loop calls it."""
        from diffusers import FluxPipeline

        embedded = self.embed(condition)
        batch, channels, height, width = x_t.shape
        packed = FluxPipeline._pack_latents(x_t, batch, channels, height, width)  # (N, h/2 * w/2, 4C)
        img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, x_t.device, x_t.dtype)
        prompt_embeds = embedded["prompt_embeds"].to(x_t.dtype)  # (N, L, D)
        txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
        distilled = self.info.get("distilled_guidance") if self.denoiser.config.guidance_embeds else None
        guidance = None if distilled is None else torch.full((batch,), float(distilled), device=x_t.device,
                                                             dtype=torch.float32)
        timestep = timesteps.to(x_t.device, x_t.dtype).expand(batch) / 1000  # the pipeline passes sigma
        output = self.denoiser(hidden_states=packed, timestep=timestep, guidance=guidance,
                               pooled_projections=embedded["pooled"].to(x_t.dtype), encoder_hidden_states=prompt_embeds,
                               txt_ids=txt_ids, img_ids=img_ids).sample  # (N, h/2 * w/2, 4C)
        # vae_scale_factor 1: the height and width given are already the latent's
        return FluxPipeline._unpack_latents(output, height, width, vae_scale_factor=1)

    def training_record(self) -> dict:
        """The flow target plus the guidance value the transformer is given (None: no guidance embedding)."""
        return {**super().training_record(), "distilled_guidance": self.info.get("distilled_guidance")}

    @classmethod
    def from_pipeline(cls, pipeline, denoiser, info: dict, train_params: str | None = "full"):
        """An in-memory FluxPipeline, training `denoiser`; the VAE and text encoders are shared."""
        return cls(denoiser, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer, pipeline.text_encoder_2,
                   pipeline.tokenizer_2, pipeline.scheduler, info, train_params=train_params)

    def to_pipeline(self):
        from diffusers import FluxPipeline

        return FluxPipeline(scheduler=self.scheduler, vae=self.vae.vae, text_encoder=self.text_encoder,
                            tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
                            transformer=self.denoiser)
