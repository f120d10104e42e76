#!/usr/bin/env bash
# DiT-XL/2 (ImageNet class-conditional): SFR-on's official DiT settings, D_f and D_r sampled from the model itself.
set -euo pipefail
MODEL=${MODEL:-./DiT-XL-2-256}

erase unlearn --model "$MODEL" --forget-class 207 --remain-classes 0-99 --data generated \
    --images-per-condition 4 --steps 600 --batch-size 1 --lr 1e-4 --forget-objective ga --forget-alpha 1e-3 \
    --mixed-precision bf16 --out ./dit-no207

erase grid --model base="$MODEL" --model erased=./dit-no207 --classes 207,1,2 --seeds 0-3 --out ./dit-grid.png
