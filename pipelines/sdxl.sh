#!/usr/bin/env bash
# SDXL 1.0 (two text encoders; the added time ids are built as the pipeline builds them).
set -euo pipefail
MODEL=${MODEL:-./stable-diffusion-xl-base-1.0}

erase unlearn --model "$MODEL" --forget-prompt "a photo of a church" --remain-prompt "a photo of a building" \
    --train-params xattn --mixed-precision bf16 --gradient-checkpointing --out ./sdxl-nochurch

# the whole UNet (2.6B parameters; 45 GB unsharded, 12.7 GB per GPU over four, by the README's memory model)
accelerate launch --use_fsdp --fsdp_version 2 --num_processes 4 --num_machines 1 --mixed_precision no \
    --dynamo_backend no -m erase unlearn --model "$MODEL" \
    --forget-prompt "a photo of a church" --remain-prompt "a photo of a building" --train-params full \
    --mixed-precision bf16 --gradient-checkpointing --out ./sdxl-nochurch-full
