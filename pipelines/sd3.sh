#!/usr/bin/env bash
# SD 3 medium / 3.5 (flow matching, MMDiT; a folder without T5 works too: 9.6 GB less by the README's memory model).
set -euo pipefail
MODEL=${MODEL:-./stable-diffusion-3.5-medium}

erase unlearn --model "$MODEL" --forget-prompt "a photo of a church" --remain-prompt "a photo of a building" \
    --train-params xattn --mixed-precision bf16 --gradient-checkpointing --out ./sd35-nochurch
