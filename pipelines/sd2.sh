#!/usr/bin/env bash
# Stable Diffusion 2.1 (768 px, v_prediction: read from scheduler/scheduler_config.json and recorded in run.json).
set -euo pipefail
MODEL=${MODEL:-./stable-diffusion-2-1}

erase unlearn --model "$MODEL" --forget-prompt "a painting in the style of Van Gogh" \
    --remain-prompt "a painting" --remain-prompt "a painting in the style of Monet" --train-params xattn \
    --mixed-precision bf16 --gradient-checkpointing --out ./sd21-novangogh

erase sample --model ./sd21-novangogh --prompts styles.csv --n-per-condition 4 --steps 50 --out ./sd21-samples
