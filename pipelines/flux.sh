#!/usr/bin/env bash
# Flux.1 dev / schnell (guidance-distilled: the embedded guidance is recorded and used in training; no CFG).
set -euo pipefail
MODEL=${MODEL:-./FLUX.1-dev}

# 12B parameters: the joint attention alone, sharded over four GPUs (90 GB unsharded by the README's memory model)
accelerate launch --use_fsdp --fsdp_version 2 --num_processes 4 --num_machines 1 --mixed_precision no \
    --dynamo_backend no -m erase unlearn --model "$MODEL" \
    --forget-prompt "a photo of a church" --remain-prompt "a photo of a building" --train-params xattn \
    --mixed-precision bf16 --gradient-checkpointing --out ./flux-nochurch
