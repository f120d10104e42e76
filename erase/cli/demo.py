"""`erase demo`: the whole story on MNIST digits, offline, on a CPU: the shipped model, one digit erased, the proof."""

from __future__ import annotations

from pathlib import Path

from erase.api import DEFAULT_CACHE
from erase.models import SHIPPED_MODEL

# erase/config.py check_ranges; the forget class is checked against the model once it loads
RANGES = {"forget_class": "[0, inf)", "steps": "[1, inf)", "per_class": "[1, inf)", "sample_steps": "[1, inf)",
          "seed": "[0, 4294967295]"}


def register(commands) -> None:
    parser = commands.add_parser(
        "demo", help="erase one digit from the shipped MNIST model with SFR-on; grid and scores",
        description="Erases --forget-class from the shipped class-conditional digit model (erase/assets/mnist-cfg-unet, "
                    "never modified) with SFR-on into OUT/erased, samples base and erased models with the same seeds, "
                    "and writes OUT/grid.png (rows: base, erased; columns: digits 0-9) and OUT/scores.json (FA, RA "
                    "per class, FID of the remaining classes vs real digits with classifier features, mask sparsity, "
                    "wall times).",
    )
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="base model folder (default: the shipped one)")
    parser.add_argument("--forget-class", type=int, default=7, help="digit to erase (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None,
                        help="SFR-on iterations (default: erase unlearn's, the cfg_unet preset's)")
    parser.add_argument("--per-class", type=int, default=100, help="scored samples per digit and model (default: %(default)s)")
    parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps per sample (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for erasure and sampling (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="real-image FID statistics cache (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args) -> None:
    import json
    import time

    import torch

    from erase.errors import UsageError
    from erase.record import environment, write_json
    from erase.eval.class_scores import class_scores, real_reference, sample_classes
    from erase.eval.classifier import load_classifier
    from erase.eval.grid import image_grid
    from erase.pipelines import load_adapter
    from erase.cli.harness import run_command
    from erase.config import check_ranges

    check_ranges(vars(args), RANGES)
    if not (args.model / "model_index.json").is_file():
        raise UsageError(f"base model {str(args.model)!r} not found; the shipped one is erase/assets/mnist-cfg-unet "
                         "(restore it from git) or pass --model a folder written by `erase train`")
    started = time.perf_counter()
    erased = args.out / "erased"
    # exactly `erase unlearn --model M --forget-class K` (the defaults users get), plus seed and output
    run_command("unlearn", "--model", args.model, "--forget-class", args.forget_class,
                *(["--steps", args.steps] if args.steps else []), "--seed", args.seed, "--out", erased, "--overwrite")
    record = json.loads((erased / "run.json").read_text())
    steps = record["config"]["steps"]

    classifier = load_classifier("digits")
    models = {"base": load_adapter(args.model), "erased": load_adapter(erased)}
    real = real_reference(classifier, "mnist", models["base"].image_shape[-1], [args.forget_class], args.cache_dir)
    samples, scores, timings = {}, {}, {"unlearn": record["timings"]}
    for name, adapter in models.items():
        samples[name] = sample_classes(adapter, args.per_class, args.seed, args.sample_steps, f"sample {name}")
        timings[f"sample_{name}"] = samples[name].seconds
        scoring = time.perf_counter()
        scores[name] = class_scores(samples[name], [args.forget_class], classifier, real)
        timings[f"score_{name}"] = time.perf_counter() - scoring
    rows = {f"{name} s{args.seed + k}": samples[name].column(k) for k in range(2) for name in models}
    image_grid(rows, [str(d) for d in range(10)]).save(args.out / "grid.png")
    timings["total"] = time.perf_counter() - started
    write_json(args.out / "scores.json", {
        "forget_class": args.forget_class, "base_model": str(args.model), "erased_model": str(erased),
        "method": "sfron", "steps": steps, "config": record["config"],
        "preset": record["preset"], "conventions": record["conventions"], "guidance_scale": models["base"].info.get("guidance_scale"),
        "per_class": args.per_class, "sample_steps": args.sample_steps, "seed": args.seed,
        "classifier": "digits (erase/assets/digit-classifier)", "fid_features": "classifier", "scores": scores,
        "mask_sparsity": record["mask_sparsity"], "timings": timings, "torch_threads": torch.get_num_threads(),
        "environment": environment(),
    })
    print(f"\ndigit {args.forget_class} erased with SFR-on ({steps} steps, {record['timings']['unlearn']:.0f} s); "
          f"{args.per_class} samples per digit, same seeds for both models")
    print(f"{'model':8s} {'FA':>6s} {'mean RA':>8s} {'FID real':>9s}   RA per digit")
    for name, s in scores.items():
        per_digit = " ".join(f"{d}:{a:.0%}" for d, a in sorted(s["remaining_accuracy"].items()))
        print(f"{name:8s} {s['forgetting_accuracy']:6.1%} {s['remaining_accuracy_mean']:8.1%} {s['fid_real']:9.2f}   {per_digit}")
    print(f"mask keeps {1 - record['mask_sparsity']['overall']:.1%} of weights; total {timings['total']:.0f} s")
    print(f"grid: {args.out / 'grid.png'}   scores: {args.out / 'scores.json'}")
