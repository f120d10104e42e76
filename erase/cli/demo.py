"""`erase demo`: the whole story on MNIST digits, offline, on a CPU: the shipped model, one digit erased, the proof.
`erase demo --text`: the same for a style named by its prompts, on the shipped text-to-image model of styled digits."""

from __future__ import annotations

from pathlib import Path

from erase.api import DEFAULT_CACHE
from erase.models import SHIPPED_MODEL, SHIPPED_TEXT_MODEL

# erase/config.py check_ranges; the forget class is checked against the model once it loads
RANGES = {"forget_class": "[0, inf)", "steps": "[1, inf)", "per_class": "[1, inf)", "sample_steps": "[1, inf)",
          "seed": "[0, 4294967295]", "per_prompt": "[1, inf)"}
GRID_STYLES = 3  # the erased style and the next two
GRID_DIGITS = (0, 3, 4, 7)


def register(commands) -> None:
    parser = commands.add_parser(
        "demo", help="erase one digit from the shipped MNIST model (or, with --text, one style from the shipped "
                     "text-to-image model) with SFR-on; grid and scores",
        description="Erases --forget-class from the shipped class-conditional digit model (erase/assets/mnist-cfg-unet, "
                    "never modified) with SFR-on into OUT/erased, samples base and erased models with the same seeds, "
                    "and writes OUT/grid.png (rows: base, erased; columns: digits 0-9) and OUT/scores.json (FA, RA "
                    "per class, FID of the remaining classes vs real digits with classifier features, mask sparsity, "
                    "wall times). With --text: erases --forget-style from the shipped text-to-image model of styled "
                    "digits (erase/assets/styled-digits-t2i) by its prompts, and scores UA, IRA, CRA, digit kept and "
                    "leak with the shipped style and digit judges; OUT/grid.png rows are prompts of that style and "
                    "two others, columns base and erased.",
    )
    parser.add_argument("--text", action="store_true",
                        help="erase a style by its prompts from the shipped text-to-image model instead of a digit")
    parser.add_argument("--model", type=Path, default=None,
                        help="base model folder (default: the shipped one, the text model with --text)")
    parser.add_argument("--forget-style", default="neon",
                        help="with --text: the style to erase, one of erase.styled's (default: %(default)s)")
    parser.add_argument("--per-prompt", type=int, default=3,
                        help="with --text: scored samples per prompt and model (default: %(default)s)")
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
    if args.text:
        return run_text(args)
    args.model = args.model or SHIPPED_MODEL
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


def run_text(args) -> None:
    """Erase one style by its prompts (erase.styled.erasure_prompts) with `erase unlearn`'s defaults; sample base and
    erased with the same seeds on every digit x style prompt and on the leak prompts; grid and concept scores."""
    import csv
    import json
    import time

    import torch

    from erase.cli.harness import run_command
    from erase.errors import UsageError
    from erase.eval.classifier import load_classifier
    from erase.eval.concepts import ConceptAccuracy
    from erase.eval.grid import image_grid
    from erase.pipelines import load_adapter
    from erase.prompts import PromptRow
    from erase.record import environment, write_json
    from erase.sampling import generate, prompt_jobs
    from erase.styled import STYLE_KEYS, STYLES, caption, erasure_prompts, evaluation_prompts, parse_concept

    model = args.model or SHIPPED_TEXT_MODEL
    if not (model / "model_index.json").is_file():
        raise UsageError(f"base model {str(model)!r} not found; the shipped text model is erase/assets/"
                         "styled-digits-t2i (restore it from git) or pass --model a folder written by `erase train "
                         "--data styled-digits --conditioning text`")
    concept = parse_concept(f"style:{args.forget_style}", "--forget-style")
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    forget = erasure_prompts(concept)
    remain = [p for s in range(len(STYLES)) if s != concept.index for p in erasure_prompts(type(concept)("style", s))]
    files = {"forget": args.out / "forget-prompts.csv", "remain": args.out / "remain-prompts.csv"}
    for name, prompts in (("forget", forget), ("remain", remain)):
        with files[name].open("w", newline="") as handle:
            csv.writer(handle).writerows([["prompt"], *([p] for p in prompts)])
    erased = args.out / "erased"
    # exactly `erase unlearn --model M --forget-prompts F --remain-prompts R` (the defaults users get)
    run_command("unlearn", "--model", model, "--forget-prompts", files["forget"], "--remain-prompts", files["remain"],
                *(["--steps", args.steps] if args.steps else []), "--seed", args.seed, "--out", erased, "--overwrite")
    record = json.loads((erased / "run.json").read_text())

    prompts = evaluation_prompts(concept)
    rows = [PromptRow(p, None, None, str(i)) for i, p in enumerate(prompts)]
    judges = load_classifier("styles"), load_classifier("styled-digits")
    models = {"base": load_adapter(model), "erased": load_adapter(erased)}
    samples, scores, timings = {}, {}, {"unlearn": record["timings"]}
    for name, adapter in models.items():
        sampling = time.perf_counter()
        jobs = prompt_jobs(rows, args.per_prompt, args.seed)
        samples[name] = generate(adapter, jobs, args.sample_steps, description=f"sample {name}")
        timings[f"sample_{name}"] = time.perf_counter() - sampling
        metric = ConceptAccuracy(*judges, concept, record.get("erased", {}).get("forget_prompts", forget))
        metric.update(samples[name], [job.condition for job in jobs])
        scores[name] = metric.compute()
    shown = [(concept.index + k) % len(STYLES) for k in range(GRID_STYLES)]
    grid = {}
    for style in shown:
        for digit in GRID_DIGITS:
            at = prompts.index(caption(digit, style)) * args.per_prompt
            grid[f"{STYLE_KEYS[style]} {digit}"] = torch.cat([samples[n][at : at + 2] for n in models])
    labels = [f"{n} s{args.seed + k}" for n in models for k in range(2)]
    image_grid(grid, labels).save(args.out / "grid.png")
    timings["total"] = time.perf_counter() - started
    write_json(args.out / "scores.json", {
        "forget_concept": concept.name, "forget_prompts": forget, "remain_prompts": len(remain), "base_model": str(model),
        "erased_model": str(erased), "method": record["method"], "config": record["config"], "preset": record["preset"],
        "guidance_scale": models["base"].info.get("guidance_scale"), "per_prompt": args.per_prompt,
        "sample_steps": args.sample_steps, "seed": args.seed, "evaluation_prompts": len(prompts),
        "judges": "styles (erase/assets/style-classifier), styled-digits (erase/assets/styled-digit-classifier)",
        "scores": scores, "timings": timings, "torch_threads": torch.get_num_threads(), "environment": environment(),
    })
    print(f"\nstyle {concept.name} erased by {len(forget)} prompts with {record['method']} "
          f"({record['config']['steps']} steps, {record['timings']['unlearn']:.0f} s); {args.per_prompt} samples per "
          "prompt, same seeds for both models")
    print(f"{'model':8s} {'UA':>6s} {'IRA':>6s} {'CRA':>6s} {'kept':>6s} {'leak spelling':>14s} {'leak template':>14s}")
    for name, s in scores.items():
        print(f"{name:8s} {s['unlearning_accuracy']:6.1%} {s['in_domain_retain_accuracy']:6.1%} "
              f"{s['cross_domain_retain_accuracy']:6.1%} {s['kept']:6.1%} {s['leak_other_spelling']:14.1%} "
              f"{s['leak_unused_template']:14.1%}")
    print(f"total {timings['total']:.0f} s; grid: {args.out / 'grid.png'}   scores: {args.out / 'scores.json'}")
