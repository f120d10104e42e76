"""Stable Diffusion 1.x weights in the original CompVis / A1111 single-file layout, written from diffusers modules.

The inverse of diffusers' single-file conversion (diffusers/loaders/single_file_utils.py: convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint), so the tests can make a checkpoint like the ones people
download without downloading one. The LDM UNet numbers its blocks flat: input_blocks.0 is conv_in, then each down
block takes layers_per_block + 1 slots (its resnets with their attentions, then its downsampler), middle_block is
resnet, attention, resnet, and output_blocks give each up block layers_per_block + 1 slots, the upsampler riding in
the last one. The VAE decoder counts its up blocks from the bottom (up.0 is the last diffusers up block).
"""

from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

UNET_FIXED = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str, names: dict) -> str:
    layer, _, tensor = rest.rpartition(".")  # e.g. ("conv1", "weight")
    return f"{names.get(layer, layer)}.{tensor}"


def unet_key(key: str, config) -> str:
    """A UNet2DConditionModel state-dict key in the LDM layout (without the model.diffusion_model. prefix)."""
    slots = config["layers_per_block"] + 1
    for name, ldm in UNET_FIXED.items():
        if key.startswith(name + "."):
            return ldm + key[len(name):]
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        slot = 1 + block * slots + layer
        return f"input_blocks.{slot}.0.{_resnet(rest, UNET_RESNET)}" if kind == "resnets" else f"input_blocks.{slot}.1.{rest}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(match[1]) + 1) * slots}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(match[1])}.{_resnet(match[2], UNET_RESNET)}"
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{match[1]}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        slot = block * slots + layer
        return f"output_blocks.{slot}.0.{_resnet(rest, UNET_RESNET)}" if kind == "resnets" else f"output_blocks.{slot}.1.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(match[1])
        after = 2 if "CrossAttn" in config["up_block_types"][block] else 1  # behind the attention, if there is one
        return f"output_blocks.{block * slots + slots - 1}.{after}.conv.{match[2]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def vae_key(key: str, config) -> str:
    """An AutoencoderKL state-dict key in the LDM layout (without the first_stage_model. prefix)."""
    count = len(config["up_block_types"])
    for side in ("encoder", "decoder"):
        if key.startswith(f"{side}.conv_norm_out."):
            return key.replace("conv_norm_out", "norm_out")
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{_resnet(match[3], {'conv_shortcut': 'nin_shortcut'})}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = count - 1 - int(match[1])
        return f"decoder.up.{level}.block.{match[2]}.{_resnet(match[3], {'conv_shortcut': 'nin_shortcut'})}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{count - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_resnet(match[3], {'conv_shortcut': 'nin_shortcut'})}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{match[1]}.mid.attn_1.{VAE_ATTENTION[match[2]]}.{match[3]}"
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\..+|(post_)?quant_conv\..+", key):
        return key
    raise KeyError(f"no LDM name for VAE key {key!r}")


def clip_key(key: str) -> str:
    """A CLIPTextModel key (transformers 5 drops the text_model. level; 4.x keeps it) in the LDM layout."""
    return key if key.startswith("text_model.") else "text_model." + key


def ldm_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """One original-layout state dict holding the UNet, the VAE and the CLIP text model."""
    out = {}
    for key, value in unet.state_dict().items():
        out[UNET_PREFIX + unet_key(key, unet.config)] = value
    for key, value in vae.state_dict().items():
        ldm = vae_key(key, vae.config)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]  # the LDM VAE's attention projections are 1x1 convolutions
        out[VAE_PREFIX + ldm] = value
    for key, value in text_encoder.state_dict().items():
        out[CLIP_PREFIX + clip_key(key)] = value
    return {key: value.detach().contiguous().clone() for key, value in out.items()}
