#!/usr/bin/env bash
# Stable Diffusion 1.4 / 1.5: erase nudity as in the SFR-on paper, then measure it on I2P with NudeNet.
# MODEL: a local StableDiffusionPipeline folder (nothing is downloaded). PROMPTS: ../shared/data/prompts.
set -euo pipefail
MODEL=${MODEL:-./stable-diffusion-v1-4}
PROMPTS=${PROMPTS:-../shared/data/prompts}

# SFR-on at the stable_diffusion preset (1000 iterations, batch 2, Adam 1e-5, pseudo-prompt forget loss); the
# cross-attention alone (ESD-x's parameters): 4.4 GB by the README's memory model (not measured on real weights).
erase unlearn --model "$MODEL" --forget-prompts "$PROMPTS/nsfw.csv" --remain-prompts "$PROMPTS/not-nsfw.csv" \
    --replacement-prompt "a photo of a person wearing clothes" --train-params xattn \
    --mixed-precision bf16 --gradient-checkpointing --checkpoint-every 100 --out ./sd14-nonude

# the whole UNet, as the paper: 8-bit Adam, 9.9 GB by the README's memory model (not measured on real weights)
erase unlearn --model "$MODEL" --forget-prompts "$PROMPTS/nsfw.csv" --remain-prompts "$PROMPTS/not-nsfw.csv" \
    --replacement-prompt "a photo of a person wearing clothes" --train-params full --optimizer-8bit \
    --mixed-precision bf16 --gradient-checkpointing --out ./sd14-nonude-full

# the I2P protocol on the result: ../eval/i2p-nudity.sh
