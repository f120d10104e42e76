#!/usr/bin/env bash
# Utility of a text-to-image model on COCO captions: FID against real images and CLIP score against each prompt.
# LIMIT keeps the first N captions (the field reports 30k; 1k-5k is common for a quick check).
set -euo pipefail
MODEL=${MODEL:?a local text-to-image model folder}
REAL=${REAL:?a folder of real COCO images}
CLIP=${CLIP:?a local CLIPModel + CLIPProcessor folder, e.g. ./clip-vit-large-patch14}
PROMPTS=${PROMPTS:-../shared/data/prompts}
LIMIT=${LIMIT:-5000}
OUT=${OUT:-./coco}

erase sample --model "$MODEL" --prompts "$PROMPTS/coco_30k.csv" --limit "$LIMIT" --n-per-condition 1 --steps 50 \
    --out "$OUT/samples"
erase score --images "$OUT/samples" --fid-ref "$REAL" --fid-features inception --clip-model "$CLIP" \
    --out "$OUT/scores.json"
