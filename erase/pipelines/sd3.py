"""Stable Diffusion 3.x (Esser et al. 2024): `SD3Transformer2DModel` (MMDiT) + two CLIP text encoders with projection
and an optional T5 encoder + `AutoencoderKL` + `FlowMatchEulerDiscreteScheduler`, as in `StableDiffusion3Pipeline`.

Reads a local `StableDiffusion3Pipeline` folder; writes a full one in which only `transformer/` is new and every other
file is copied byte for byte. The text encoders and VAE are frozen. Training target: rectified flow (velocity eps - x0
at x_sigma = (1 - sigma) x0 + sigma eps; erase/pipelines/targets.py) with sigma drawn logit-normal(0, 1), the
"rf/lognorm(0.00, 1.00)" of the paper's Table 1 and the default `--weighting_scheme logit_normal` (logit_mean 0,
logit_std 1) of diffusers' examples/dreambooth/train_dreambooth_sd3.py, whose loss weighting is 1 for that scheme.

Prompts are conditions (erase/pipelines/text.py), encoded by diffusers' own `StableDiffusion3Pipeline.encode_prompt`:
{"prompt_embeds": (N, L_clip + L_t5, joint_attention_dim), "pooled": (N, pooled_projection_dim)}. Without T5
(`text_encoder_3` None, which SD 3 allows) the T5 part is zeros, as the pipeline makes it. The null condition, prompt
id 0, is the empty prompt "": the pipeline's own negative prompt when none is given, so guidance here is the
pipeline's `v_null + s (v_c - v_null)`.

`--train-params xattn` trains the joint attention of the MMDiT blocks, where the text and image streams attend to
each other: both the image projections (to_q/to_k/to_v/to_out) and the context projections (add_q_proj/add_k_proj/
add_v_proj/to_add_out), with their q/k norms; SD 3.5's `attn2` (image-only self-attention) does not read the text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import SD3Transformer2DModel

from erase.errors import ModelError
from erase.pipelines.base import AdapterBase
from erase.pipelines.latent import FrozenVAE
from erase.pipelines.targets import FlowMatching
from erase.pipelines.text import PromptConditioning

# ESD-u's frozen layers besides the joint attention: the timestep and pooled-text embedders (time_text_embed), the
# text-token projection (context_embedder, which reads only text; frozen in Flux alike), the output norm and projection
SD3_OUTPUT_LAYERS = ("time_text_embed", "context_embedder", "norm_out", "proj_out")
GUIDANCE_CONVENTION = "v_null + s * (v_c - v_null)"  # StableDiffusion3Pipeline's, on the flow velocity
# sigma ~ logit-normal(0, 1): the paper's rf/lognorm(0.00, 1.00) and train_dreambooth_sd3.py's default weighting_scheme
FLOW_OPTIONS = dict(density="logit_normal", logit_mean=0.0, logit_std=1.0)


class StableDiffusion3Adapter(PromptConditioning, AdapterBase):
    backbone = "sd3"
    text_encoder_names = ('text_encoder', 'text_encoder_2', 'text_encoder_3')
    pipeline_class = "StableDiffusion3Pipeline"
    trained_component = "transformer"
    preset = "stable_diffusion"  # SFR-on's Stable Diffusion settings (erase/methods/sfron.py PRESETS)
    default_data = "generated"
    output_layers = SD3_OUTPUT_LAYERS
    text_attention_rule = ("joint attention of the MMDiT blocks (transformer_blocks.*.attn.*: image to_q/to_k/to_v/"
                           "to_out and text add_q_proj/add_k_proj/add_v_proj/to_add_out)")
    max_sequence_length = 256  # T5 tokens, StableDiffusion3Pipeline.__call__'s default: prompts embed as it samples

    def __init__(self, transformer: SD3Transformer2DModel, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 text_encoder_3, tokenizer_3, scheduler, info: dict | None = None, source: Path | None = None,
                 train_params: str | None = "full"):
        super().__init__(transformer, scheduler, info, **FLOW_OPTIONS)
        if not isinstance(self.parameterization, FlowMatching):
            raise ModelError(f"an SD 3 transformer is a flow-matching model; its scheduler is a "
                             f"{type(scheduler).__name__} (use FlowMatchEulerDiscreteScheduler in "
                             "scheduler/scheduler_config.json)")
        self.vae = FrozenVAE(vae)  # (z - shift_factor) * scaling_factor, as StableDiffusion3Pipeline inverts it
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.text_encoder_2 = text_encoder_2.requires_grad_(False).eval()
        # T5 is optional: SD 3 conditions on zeros in its place (StableDiffusion3Pipeline._get_t5_prompt_embeds)
        self.text_encoder_3 = None if text_encoder_3 is None else text_encoder_3.requires_grad_(False).eval()
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = tokenizer, tokenizer_2, tokenizer_3
        self.source = source  # the folder whose other components are copied on save
        self.info.setdefault("guidance_scale", 7.0)  # StableDiffusion3Pipeline's default
        self.info["guidance_convention"] = GUIDANCE_CONVENTION
        self.init_prompts()  # id 0 = "": the null condition
        if train_params is not None:  # None: sampling only, the transformer's requires_grad flags stay as they are
            self.select_trainable(train_params)

    def text_attention(self, name: str) -> bool:
        return name.startswith("transformer_blocks.") and ".attn." in name

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """StableDiffusion3Pipeline.encode_prompt, unguided, the same prompt to all three encoders: CLIP penultimate
        states (concatenated, padded to T5's width) followed by T5's, and the two CLIP pooled projections."""
        prompt_embeds, _, pooled, _ = self.to_pipeline().encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.text_encoder.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": prompt_embeds, "pooled": pooled}  # (N, L, D), (N, P)

    @property
    def image_seq_len(self) -> int:
        """Image tokens, for schedulers with a resolution-dependent shift (as StableDiffusion3Pipeline computes mu)."""
        patches = self.denoiser.config.sample_size // self.denoiser.config.patch_size
        return patches * patches

    def model_output(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition) -> torch.Tensor:
        """The velocity at (x_t, sigma * T): timesteps go in as the pipeline passes them (floats, T = pure noise)."""
        embedded = self.embed(condition)
        return self.denoiser(hidden_states=x_t, timestep=timesteps, encoder_hidden_states=embedded["prompt_embeds"],
                             pooled_projections=embedded["pooled"]).sample

    @classmethod
    def from_pipeline(cls, pipeline, denoiser, info: dict, train_params: str | None = "full"):
        """An in-memory StableDiffusion3Pipeline, training `denoiser`; the VAE and text encoders are shared."""
        return cls(denoiser, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer, pipeline.text_encoder_2,
                   pipeline.tokenizer_2, pipeline.text_encoder_3, pipeline.tokenizer_3, pipeline.scheduler, info,
                   train_params=train_params)

    def to_pipeline(self):
        from diffusers import StableDiffusion3Pipeline  # imported late: its import warns about torchvision

        return StableDiffusion3Pipeline(
            transformer=self.denoiser, scheduler=self.scheduler, vae=self.vae.vae, text_encoder=self.text_encoder,
            tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
            text_encoder_3=self.text_encoder_3, tokenizer_3=self.tokenizer_3)
