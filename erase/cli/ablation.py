"""`erase ablation`: SFR-on from the settings this project used before its convention fixes to its defaults, one change a row,
on a development digit the benchmark does not use; every row sampled and classified (FA, RA, FID), never judged
by loss values. Writes OUT/results.json and ablation.md (the project's is docs/ablation.md)."""

from __future__ import annotations

from pathlib import Path

from erase.cli.common import add_scoring_arguments
from erase.models import SHIPPED_MODEL

# erase/config.py check_ranges: this command's flags and add_scoring_arguments'
RANGES = {"forget_class": "[0, inf)", "steps": "[1, inf)", "fisher_batches": "[1, inf)", "per_class": "[1, inf)",
          "sample_steps": "[1, inf)", "monitor_every": "[1, inf)", "monitor_samples": "[1, inf)",
          "seed": "[0, 4294967295]"}

# Each row is complete on its own (every setting spelled out, so a row means the same if defaults move) and
# changes one thing against the row above; the defaults row passes no method flag at all: it is
# `erase unlearn --model M --forget-class K` as users run it (the cfg_unet preset). Side rows change one thing
# against the defaults.
BEFORE = {"batch-size": 64, "steps": 150, "lr": 1e-4, "loss-reduction": "mean", "remain-label-dropout": 0,
          "fisher-guidance": 2, "fisher-batches": 20, "mask-mode": "restore", "gamma": 1,
          "forget-objective": "adaptive", "alpha-placement": "loss", "forget-every": 1, "forget-dense": 0}
CHANGES = [  # (label, what changed against the row above, the settings it changes)
    ("before the convention fixes", "pixel-mean loss, no remain label dropout, Fisher at s = 2 (the old demo/benchmark run)", {}),
    ("+ pixel-sum loss", "loss summed over pixels as in the official DDPM code (forget_alpha 10 and clip 1 assume it)",
     {"loss-reduction": "sum"}),
    ("+ remain label dropout", "remain labels dropped to null at the base's recorded training rate (0.1)",
     {"remain-label-dropout": "none"}),
    ("+ Fisher at s = 3", "Fisher on the guided eps at the official cond_scale 2.0, which is s = 3 here",
     {"fisher-guidance": 3}),
    ("+ pseudo objective", "forget step maps the digit to the next class (descent) instead of weighted ascent",
     {"forget-objective": "pseudo"}),
    ("+ alpha on the clipped step", "forget_alpha multiplies the clipped forget gradient (under the sum loss the "
     "clip binds, so alpha on the loss has no effect)", {"alpha-placement": "clipped"}),
]
DEFAULTS_ROW = ("defaults", "lr 2e-4, a forget step on each of the first 20 of 120 iterations and then every 2nd, "
                            "10 Fisher batches; no flags at all (the cfg_unet preset)")
SIDE_ROWS = [  # compared against the defaults row, not cumulative
    ("defaults, gradient-only mask", "mask-0 entries not restored after the forget step (the official form)",
     ["--mask-mode", "gradient"]),
    ("defaults, adaptive ascent", "the paper's weighted gradient ascent instead of the pseudo objective",
     ["--forget-objective", "adaptive"]),
    ("defaults, gamma 3", "sparser saliency mask: F_f / F_r >= 3 instead of 1", ["--gamma", 3]),
]


def ablation_rows() -> list[tuple[str, str, list]]:
    """(label, change, erase unlearn flags) per row, cumulative over CHANGES, then the defaults row."""
    rows, settings = [], dict(BEFORE)
    for label, change, update in CHANGES:
        settings.update(update)
        rows.append((label, change, [part for name, value in settings.items() for part in (f"--{name}", value)]))
    return rows + [(*DEFAULTS_ROW, [])] + SIDE_ROWS


def register(commands) -> None:
    parser = commands.add_parser(
        "ablation", help="SFR-on, one change at a time from the old settings to the defaults; FA, RA, FID per row",
        description="Erases --forget-class from --model with SFR-on once per row of erase/cli/ablation.py CHANGES (from "
                    "the settings used before the convention fixes to today's defaults, one change a row), probing FA every "
                    "--monitor-every steps; samples every model with the same seeds and scores FA, mean RA and FID "
                    "of the remaining classes vs real digits. Writes OUT/results.json and ablation.md (with a grid); "
                    "finished rows are reused when rerun with the same flags.",
    )
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="base model (default: the shipped one)")
    parser.add_argument("--forget-class", type=int, default=5,
                        help="development digit, not one of the benchmark's 1, 3, 7 (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None,
                        help="override every row's iterations (quick checks; the report says so) (default: per row)")
    parser.add_argument("--fisher-batches", type=int, default=None,
                        help="override the Fisher batches of every row (quick checks) (default: the method's)")
    parser.add_argument("--report-dir", type=Path, default=None, help="where ablation.md goes (default: OUT)")
    add_scoring_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("ablation-out"), help="output folder (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args) -> None:
    import time

    from erase.errors import UsageError
    from erase.record import environment, write_json
    from erase.eval.class_scores import class_scores, real_reference, sample_classes
    from erase.eval.classifier import load_classifier
    from erase.eval.probe import first_step_below
    from erase.pipelines import load_adapter
    from erase.cli.benchmark import method_seconds
    from erase.cli.harness import cached_unlearn
    from erase.config import check_ranges

    check_ranges(vars(args), RANGES)
    started = time.time()
    base = load_adapter(args.model)
    if base.backbone != "cfg_unet":
        raise UsageError(f"the ablation erases a class from a CFG UNet written by `erase train`; got {base.backbone}")
    base.check_class_ids([args.forget_class])
    classifier = load_classifier("digits")
    real = real_reference(classifier, "mnist", base.image_shape[-1], [args.forget_class], args.cache_dir)
    args.out.mkdir(parents=True, exist_ok=True)

    def sample(adapter, name):
        return sample_classes(adapter, args.per_class, args.seed, args.sample_steps, description=f"sample {name}")

    base_samples = sample(base, "base")
    rows = [{"label": "base model", "change": "", "flags": [], "steps": 0, "seconds": 0.0,
             "first_step_fa_below_5pct": None, **class_scores(base_samples, [args.forget_class], classifier, real)}]
    grid = {"base": base_samples.column()}
    quick = [*(["--steps", args.steps] if args.steps else []),
             *(["--fisher-batches", args.fisher_batches] if args.fisher_batches else [])]
    for index, (label, change, flags) in enumerate(ablation_rows()):
        folder = args.out / "runs" / f"row{index}"
        record = cached_unlearn(folder, ["--model", args.model, "--forget-class", args.forget_class, "--method",
                                         "sfron", *flags, *quick, "--monitor-every", args.monitor_every,
                                         "--monitor-samples", args.monitor_samples, "--seed", args.seed])
        samples = sample(load_adapter(folder), label)
        grid[label] = samples.column()
        rows.append({"label": label, "change": change, "flags": [str(f) for f in flags],
                     "steps": record["config"]["steps"], "seconds": method_seconds(record["timings"]),
                     "first_step_fa_below_5pct": first_step_below(record["monitor"]["history"], 0.05),
                     "fa_curve": record["monitor"]["history"], "config": record["config"],
                     "conventions": record["conventions"], "preset": record.get("preset"),
                     **class_scores(samples, [args.forget_class], classifier, real)})
    results = {"command": "ablation", "model": str(args.model), "forget_class": args.forget_class,
               "guidance_scale": base.info.get("guidance_scale"), "per_class": args.per_class,
               "sample_steps": args.sample_steps, "seed": args.seed, "monitor_every": args.monitor_every,
               "monitor_samples": args.monitor_samples, "quick_overrides": [str(q) for q in quick], "rows": rows, "started": started,
               "seconds": time.time() - started, "environment": environment()}
    write_json(args.out / "results.json", results)
    report = write_ablation_report(results, grid, args.report_dir or args.out)
    print(f"results: {args.out / 'results.json'}   report: {report}")


def write_ablation_report(results: dict, grid: dict, directory: Path) -> Path:
    """ablation.md and ablation-grid.png in `directory` (generated; never edited by hand)."""
    import datetime
    import shlex

    from erase.eval.grid import image_grid

    directory.mkdir(parents=True, exist_ok=True)
    env = results["environment"]
    command = "erase " + shlex.join(env["command"][1:]) if env["command"] else "erase ablation"
    k = results["forget_class"]
    lines = [
        f"# Ablation: SFR-on erasing digit {k}, from the old settings to the defaults",
        "",
        "<!-- generated by `erase ablation`; do not edit by hand, rerun the command -->",
        "",
        f"Command: `{command}`  ",
        f"Machine: {env['cpu']} ({env['cpu_count']} cores), GPU: {env['gpu'] or 'none'}; torch "
        f"{env['packages']['torch']}  ",
        f"Date: {datetime.datetime.fromtimestamp(results['started']).strftime('%Y-%m-%d')}; "
        f"{results['seconds'] / 60:.1f} min",
        "",
        f"Model `{results['model']}` at guidance scale {results['guidance_scale']:g}; digit {k} is a development digit "
        "(the benchmark erases 1, 3 and 7; the cfg_unet preset's schedule was chosen on sweeps over digits 1, 3, 5 and "
        "7, erase/methods/sfron.py says which, so the benchmark's digits are not held out from it). Each row "
        "changes one thing against the row above; every model is sampled with the same seeds: "
        f"{results['per_class']} images per digit, DDIM {results['sample_steps']} steps, and judged by the shipped "
        "digit classifier. FA: share of digit-{k} samples classified as {k}; mean RA: accuracy on the other nine; "
        "FID real: remaining digits vs real MNIST in the classifier's feature space; steps to FA<5%: first FA probe "
        f"(every {results['monitor_every']} steps, {results['monitor_samples']} samples) below 5%.".replace("{k}", str(k)),
        "",
        *([f"**Quick run** (`{' '.join(results['quick_overrides'])}` on every row): not the ablation's settings.", ""]
          if results["quick_overrides"] else []),
        "| row | change | FA | mean RA | FID real | steps | steps to FA<5% | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        first = row["first_step_fa_below_5pct"]
        lines.append(f"| {row['label']} | {row['change']} | {row['forgetting_accuracy']:.1%} | "
                     f"{row['remaining_accuracy_mean']:.1%} | {row['fid_real']:.1f} | {row['steps']} | "
                     f"{'-' if first is None else first} | {row['seconds']:.1f} |")
    lines += ["", "Flags of each row (`erase unlearn --method sfron ...`):", ""]
    lines += [f"- {row['label']}: `{' '.join(row['flags']) or '(none)'}`" for row in results["rows"][1:]]
    image_grid(grid, [str(c) for c in range(10)]).save(directory / "ablation-grid.png")
    lines += ["", "![first seed of every digit, per row](ablation-grid.png)", "",
              "Columns: digits 0-9, first seed; rows: the base model and each row above."]
    path = directory / "ablation.md"
    path.write_text("\n".join(lines) + "\n")
    return path
