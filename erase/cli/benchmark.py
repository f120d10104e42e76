"""`erase benchmark`: every erasure method on the same base model, forget classes, seeds and sample counts, against
a model retrained without the forget class (RT, the gold standard); writes results.json and a markdown report."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from erase.eval.inversion import INVERSION_IMAGES, INVERSION_LR, INVERSION_STEPS
from erase.eval.relearn import RELEARN_IMAGES
from erase.cli.common import add_scoring_arguments
from erase.cli.harness import method_seconds
from erase.models import SHIPPED_MODEL
from erase.cli.tuning import DEV_CLASSES, TUNE_PER_CLASS

# `erase unlearn` flags per method: each paper's setting scaled to the 16 px digit model (docs/benchmark.md says how).
# Loss weights, temperatures, mask rules and schedules stay at the methods' defaults (the papers' values).
SETTINGS = {
    "sfron": [],  # the defaults users get: the cfg_unet preset (official DDPM conventions, docs/ablation.md)
    "joint": [],
    "nabla_tau": [],  # the cfg_unet preset (erase/methods/nabla_tau.py NABLA_TAU_PRESETS, docs/nabla-tau.md)
    "ga": ["--steps", 100, "--lr", 1e-4, "--batch-size", 64],  # SalUn DDPM: 1000 at 1e-5 -> 100 at 1e-4
    "rl": ["--steps", 100, "--lr", 1e-4, "--batch-size", 64],
    "salun": ["--steps", 100, "--lr", 1e-4, "--batch-size", 64],
    "esd": ["--steps", 100, "--lr", 1e-4],  # ESD (SD): 1000 at 1e-5 -> 100 at 1e-4, one condition per step; the DDPM rows ran 10000 (docs/baselines.md)
    "sa": ["--steps", 100, "--lr", 1e-3, "--batch-size", 64],  # 100 at 1e-3 (SA's DDPM config: 20000 at 1e-4; docs/baselines.md)
}
SCALING_NOTE = (
    "Iteration counts of 1000 at lr 1e-5 (GA, RL, SalUn, ESD: SalUn's and ESD's settings) and 1000 at 1e-4 (SA) "
    "become 100 at 10x the learning rate (same lr x steps); SFR-on and its joint variant run at `erase unlearn`'s "
    "defaults for class UNets (the cfg_unet preset: the SFR-on DDPM setting), and so does Nabla-tau (its cfg_unet "
    "preset: 150 iterations at lr 3e-4 with the directed forget term, docs/nabla-tau.md). Batches are 64 (the base "
    "model's training batch) instead of 128; "
    "ESD keeps one condition per step. Every other hyperparameter is the method's default (the papers' values, "
    "under the loss conventions each paper's code used, or converted exactly: RL and SalUn weigh a pixel-mean remain "
    "term by 3.072, SalUn's 1e-3 on a pixel sum at 3x32x32; see each method's --loss-reduction / --remain-reduction). "
    "ESD and SA run below the strength of their published DDPM rows (10,000 and 20,000 iterations; SA's EWC lambda "
    "under its own conventions); why, and what more budget does here: docs/baselines.md."
)
# Why a method may lose the other classes at its benchmark setting (the report prints this for a method whose mean
# RA falls below 80%; a collapse without an entry here is reported as unexplained).
COLLAPSE_REASONS = {
    "ga": "unbounded gradient ascent on a shared denoiser raises every class's loss: without a remain term "
          "(remain_alpha 0, SalUn's GA baseline) nothing pulls the other classes back, and with SalUn's remain "
          "weight either the ascent still wins or nothing is erased (`erase benchmark --tune`'s sweep shows both)",
    "esd": "ESD trains only on the forget condition, with no remain data; it was designed for text-to-image models "
           "where other prompts share little with the erased one, not for a 10-class UNet whose classes share all "
           "weights. More budget does not rescue it: 1000 iterations (10x) on digit 3 reach FA 8% at mean RA 23% "
           "(docs/baselines.md)",
}
# The methods run by default: SFR-on, Nabla-tau and the baselines; SFR-on's joint variant is an ablation
# (docs/ablation.md) and runs when named in --methods.
DEFAULT_METHODS = [method for method in SETTINGS if method != "joint"]
# erase/config.py check_ranges: this command's numeric flags, refused before any model loads
RANGES = {"steps": "[1, inf)", "rt_steps": "[1, inf)", "tune_per_class": "[1, inf)", "extra_seeds": "[0, inf)",
          "inversion_steps": "[0, inf)",
          "per_class": "[1, inf)", "sample_steps": "[1, inf)", "monitor_every": "[1, inf)",
          "monitor_samples": "[1, inf)", "seed": "[0, 4294967295]", "all_digits_per_class": "[1, inf)"}
RECIPE_FLAGS = ("steps", "batch_size", "lr", "label_dropout", "ema_decay", "max_grad_norm")


def register(commands) -> None:
    parser = commands.add_parser(
        "benchmark", help="all methods x forget classes vs a retrained-without-class model; table, grids, plot",
        description="For each forget class: trains (or reuses) a model without that class with the base model's own "
                    "recipe (RT), erases the class from the base with every method (settings in "
                    "erase/cli/benchmark.py SETTINGS) while probing FA every --monitor-every steps, samples every "
                    "model with the same seeds and scores FA, mean RA, FID of the remaining classes vs real digits "
                    "and vs RT samples (classifier features), and FA under concept inversion (erase attack) of the "
                    "base, RT and each method's first-seed model. Writes OUT/results.json, OUT/benchmark.md, grids and "
                    "an FA-vs-step plot; finished runs, their scores and samples are reused when rerun with the same "
                    "flags (OUT/tune, OUT/tuned or OUT/runs, OUT/samples).",
    )
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL,
                        help="base model folder written by `erase train` (default: the shipped erase/assets/mnist-cfg-unet)")
    parser.add_argument("--forget-classes", default="1,3,7", help="classes erased one at a time (default: %(default)s)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated methods; 'joint' (SFR-on's one-update variant) is also available "
                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None,
                        help="override every method's steps (quick checks; the report says so) (default: per method)")
    parser.add_argument("--rt-steps", type=int, default=None,
                        help="override RT training steps (quick checks; default: the base model's recipe)")
    parser.add_argument("--rt-cache", type=Path, default=None, help="folder of RT models (default: OUT/rt)")
    tuning = parser.add_argument_group("tuning protocol (erase/cli/tuning.py)")
    tuning.add_argument("--tune", action="store_true",
                        help="tune first: every method's grid (at most 8 configurations) on --dev-classes, the "
                             "configuration with the best mean RA among those with FA <= 5%% (else the lowest FA) "
                             "then runs on the test digits; without it every method runs its SETTINGS entry")
    tuning.add_argument("--dev-classes", default=DEV_CLASSES,
                        help="development digits the grid is tried on; never test digits (default: %(default)s)")
    tuning.add_argument("--tune-per-class", type=int, default=TUNE_PER_CLASS,
                        help="samples per class scoring a tuning run (default: %(default)s)")
    parser.add_argument("--extra-seeds", type=int, default=2,
                        help="further run seeds (--seed + 1, ...) for every method on every test digit; tables give "
                             "the mean and the range over seeds (default: %(default)s)")
    parser.add_argument("--all-digits", default="none",
                        help="with --tune: SFR-on's and the best baseline's chosen configurations also erase each of "
                             "these digits (seed --seed), e.g. 'rest' (every digit but the development ones) or "
                             "0,2,4; 'none' skips it (default: %(default)s)")
    parser.add_argument("--all-digits-per-class", type=int, default=100,
                        help="samples per class scoring the --all-digits runs (default: %(default)s)")
    parser.add_argument("--relearn-steps", default="10,25,50",
                        help="relearning probe: FA after fine-tuning each erased model (and RT) for these many steps "
                             f"on {RELEARN_IMAGES} real images of the forget digit; 'none' skips it (default: %(default)s)")
    parser.add_argument("--inversion-steps", type=int, default=INVERSION_STEPS,
                        help="concept inversion (erase attack): steps of the attack on the base, RT and every method's first-seed "
                             "model for each forget class, FA of the attacked samples in the tables; 0 skips it "
                             "(default: %(default)s)")
    parser.add_argument("--multi-concept", default="none",
                        help="with --tune: SFR-on and the best baseline erase these digits at once and one after "
                             "another (each from the previous result), against RT retrained without all of them, "
                             "e.g. 1,3,7; 'none' skips it (default: %(default)s)")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="where benchmark.md and its pictures go (default: OUT; the project's is docs/)")
    add_scoring_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmark-out"), help="output folder (default: %(default)s)")
    parser.set_defaults(run=run)


def training_recipe(model: Path) -> tuple[dict, list]:
    """The base model's `erase train` record and the flags that repeat it."""
    from erase.errors import UsageError

    record_file = model / "run.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    if record.get("command") != "train":
        raise UsageError(f"{str(model)!r} has no `erase train` run.json; the benchmark retrains RT with the base "
                         "model's recipe, so pass a model written by `erase train`")
    flags = ["--data", record["data"], "--resolution", record["resolution"],
             "--channels", ",".join(str(c) for c in record["channels"]),
             "--layers-per-block", record.get("layers_per_block", 1), "--seed", record["runtime"]["seed"]]
    flags += ["--attention"] if record.get("attention") else []
    for name in RECIPE_FLAGS:
        value = record["config"][name]
        flags += [f"--{name.replace('_', '-')}", value] if value is not None else []
    return record, flags


def retrained_model(args, model: Path, forget_class: int | list[int], guidance_scale: float) -> Path:
    """RT without `forget_class` (a class or several): reused from the cache when its recorded flags match, else
    trained now."""
    from erase.cli.harness import cached_training

    _, flags = training_recipe(model)
    if args.rt_steps is not None:
        flags += ["--steps", args.rt_steps]
    classes = forget_class if isinstance(forget_class, list) else [forget_class]
    flags = [str(f) for f in flags + ["--exclude-classes", ",".join(map(str, classes)), "--guidance-scale",
                                      guidance_scale]]
    folder = (args.rt_cache or args.out / "rt") / f"without-{'-'.join(map(str, classes))}"
    return cached_training(folder, flags, f"without class {forget_class}")


def erased_model(args, data: str, method: str, forget_class: int | str, settings: list, seed: int,
                 probed: bool, model: Path | None = None, name: str | None = None) -> tuple[Path, dict]:
    """The method's erased model and its run.json, reused when the same flags produced it before (tuned runs live in
    OUT/tuned, runs at SETTINGS in OUT/runs). `probed` runs probe FA along the way: the first seed's on the test
    digits; the further seeds and the --all-digits runs do not (the probes cost about as much as the final samples).
    `model` (default --model) is what is erased from; `name` the run's folder name (default METHOD-CLASS[-seedN])."""
    from erase.cli.harness import cached_unlearn

    monitor = ["--monitor-every", args.monitor_every, "--monitor-samples", args.monitor_samples] if probed else []
    flags = ["--model", model or args.model, "--data", data, "--forget-class", forget_class, "--method", method, *settings,
             *(["--steps", args.steps] if args.steps else []), *monitor, "--seed", seed]
    name = name or f"{method}-{forget_class}" + (f"-seed{seed}" if seed != args.seed else "")
    folder = args.out / ("tuned" if args.tune else "runs") / name
    return folder, cached_unlearn(folder, flags)


def relearn_milestones(text: str) -> list[int] | None:
    """--relearn-steps as step counts, or None for 'none'."""
    from erase.errors import UsageError

    if text.strip().lower() == "none":
        return None
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise UsageError(f"--relearn-steps: positive step counts like 10,25,50 or 'none', got {text!r}")
    return [int(part) for part in parts]


def relearning(args, milestones: list[int] | None, adapter, folder: Path, key: dict, real_images, forget_class: int,
               classifier) -> list[dict] | None:
    """FA after the relearning probe's fine-tuning steps (cached in `folder`), or None when `milestones` is None."""
    from erase.eval.probe import forgetting_probe
    from erase.eval.relearn import relearn_curve
    from erase.cli.harness import cached_json

    if milestones is None:
        return None
    probe = forgetting_probe(classifier, [forget_class], args.monitor_samples, 25, args.seed)
    key = {**key, "milestones": milestones, "images": RELEARN_IMAGES, "samples": args.monitor_samples, "seed": args.seed}
    return cached_json(folder / "relearn.json", key, lambda: relearn_curve(
        adapter, *real_images, lambda a: {"fa": probe(a)["fa"]}, milestones, seed=args.seed))


def inversion_fa(args, adapter, path: Path, key: dict, data: str, forget_class: int, classifier,
                 spent: dict) -> float | None:
    """FA of `adapter`'s samples of `forget_class` under concept inversion (erase attack's), cached in `path`; None
    when --inversion-steps is 0. The attack's recorded seconds are added to spent["attacks"]."""
    from erase.cli.harness import cached_json
    from erase.eval.attack import attack_concept, make_judge

    if not args.inversion_steps:
        return None
    budget = {"images": INVERSION_IMAGES, "steps": args.inversion_steps, "lr": INVERSION_LR}
    key = {**key, **budget, "samples": args.monitor_samples, "seed": args.seed}
    path.parent.mkdir(parents=True, exist_ok=True)
    judge = make_judge(classifier, forget_class, False, 0.6)
    row = cached_json(path, key, lambda: attack_concept(adapter, forget_class, forget_class, "inversion", budget, judge,
                                                        data, args.monitor_samples, 25, args.seed))
    spent["attacks"] = spent.get("attacks", 0.0) + row.get("seconds", 0.0)
    return row["fa_after"]


def multi_concept(args, data: str, classes: list[int], pair: list[str], settings: dict, guidance: float, classifier,
                  sample, base_samples, test_classes: list[int]) -> dict:
    """SFR-on and the best baseline erasing `classes` at once and in sequence (each run erases the next class from
    the previous run's model, the first is the test run of seed --seed), against RT without all of them: FA per
    erased class and mean RA of the others, from the same seeds as every other model."""
    from erase.eval.classifier import forgetting_metrics, predict_probabilities
    from erase.pipelines import load_adapter

    joined = "-".join(map(str, classes))

    def scores(name: str, mode: str, samples) -> dict:
        probabilities = predict_probabilities(classifier, samples.images)
        every = forgetting_metrics(probabilities, samples.conditions, classes)
        return {"method": name, "mode": mode, "ra": every["remaining_accuracy_mean"],
                "fa": [forgetting_metrics(probabilities, samples.conditions, [c])["forgetting_accuracy"]
                       for c in classes]}  # in the order of `classes`

    rt_folder = retrained_model(args, args.model, classes, guidance)
    spent = json.loads((rt_folder / "run.json").read_text())["timings"]["train"]
    rows = [scores("base", "-", base_samples),
            scores("RT", "retrained without all", sample(load_adapter(rt_folder), rt_folder,
                                                         f"RT without {joined}", f"RT-{joined}"))]
    for method in pair:
        folder, run_record = erased_model(args, data, method, ",".join(map(str, classes)), settings[method], args.seed,
                                          probed=False, name=f"{method}-{joined}-at-once")
        spent += sum(run_record["timings"].values())
        rows.append(scores(method, "at once", sample(load_adapter(folder), folder, f"{method} without {joined}",
                                                     f"multi-{folder.name}")))
        model, done = None, []
        for c in classes:
            done.append(c)
            name = None if len(done) == 1 else f"{method}-{'-then-'.join(map(str, done))}"
            folder, run_record = erased_model(args, data, method, c, settings[method], args.seed,
                                              probed=len(done) == 1 and c in test_classes, model=model, name=name)
            spent += sum(run_record["timings"].values()) if len(done) > 1 else 0.0  # the first is a test run
            model = folder
        rows.append(scores(method, "in sequence", sample(load_adapter(folder), folder, f"{method} {joined} in sequence",
                                                         f"multi-{folder.name}")))
    return {"classes": classes, "methods": pair, "seed": args.seed, "rows": rows, "run_seconds": spent}


def tau_reference(base, rt, erased, data, forget_class: int, run_record: dict, seed: int) -> dict:
    """Nabla-tau's tau against tau*, the loss of a model that never learned the class (RT) on the forget images under
    their own label, and the base and erased models' losses there; the same fixed draws as Nabla-tau's own estimate."""
    from erase.data import split_by_class
    from erase.eval.losses import fixed_draw_loss

    forget, _ = split_by_class(data, [forget_class])
    samples = run_record["config"]["tau_samples"]
    record = run_record["method_record"]
    return {"class": forget_class, "tau_source": record["tau_source"], "gap": record.get("gap", "absolute"),
            "direction": record.get("direction", "ascent"),
            "tau_factor": run_record["config"]["tau_factor"], "tau_start": record["tau"][0]["tau"],
            "tau_star": fixed_draw_loss(rt, forget, samples, seed=seed),
            "base_loss": fixed_draw_loss(base, forget, samples, seed=seed),
            "erased_loss": fixed_draw_loss(erased, forget, samples, seed=seed)}


@dataclass
class Bench:
    """What every part of one benchmark run shares: the flags, the base model and its scored samples, the judge,
    each method's settings and seeds, and the seconds spent on runs (cached or not: what a run from scratch costs)."""
    args: argparse.Namespace
    base: object
    data_name: str
    data: object
    classifier: object
    settings: dict
    seeds: dict
    guidance: float
    run_seconds: dict = field(default_factory=lambda: {"rt": 0.0, "test": 0.0})
    base_samples: object = None

    def sample(self, adapter, folder: Path, name: str, file: str, per_class: int | None = None):
        """The model's scored samples, cached in OUT/samples under the model's digest and the sampling flags."""
        from erase.cli.harness import cached_samples, model_digest
        from erase.eval.class_scores import sample_classes

        args, per_class = self.args, per_class or self.args.per_class
        key = {"model": model_digest(folder), "per_class": per_class, "sample_steps": args.sample_steps,
               "seed": args.seed}
        return cached_samples(args.out / "samples" / f"{file}.safetensors", key, lambda: sample_classes(
            adapter, per_class, args.seed, args.sample_steps, description=f"sample {name}"))


def checked_options(args):
    """(methods, relearning milestones, test digits, --all-digits: 'none', 'rest' or digits, --multi-concept digits
    or None), every one refused here rather than after hours of runs."""
    from erase.data import parse_class_ids
    from erase.errors import UsageError
    from erase.methods import METHODS
    from erase.config import check_ranges

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise UsageError(f"--methods: unknown {unknown}; choose from {sorted(METHODS)}")
    check_ranges(vars(args), RANGES)
    milestones = relearn_milestones(args.relearn_steps)
    forget_classes = parse_class_ids(args.forget_classes)
    every_spec = args.all_digits.strip().lower()
    if every_spec not in ("none", "rest"):
        every_spec = parse_class_ids(args.all_digits)
    if every_spec != "none" and not args.tune:
        raise UsageError("--all-digits runs the tuned configurations: add --tune, or pass --all-digits none")
    multi_classes = None if args.multi_concept.strip().lower() == "none" else parse_class_ids(args.multi_concept)
    if multi_classes is not None and (not args.tune or len(multi_classes) < 2):
        raise UsageError("--multi-concept erases two or more digits with the tuned configurations: pass --tune and "
                         "digits like 1,3,7, or --multi-concept none")
    return methods, milestones, forget_classes, every_spec, multi_classes


def run(args) -> None:
    import time

    from erase.data import load_dataset
    from erase.errors import UsageError
    from erase.record import environment, write_json
    from erase.eval.classifier import load_classifier
    from erase.eval.report import write_report
    from erase.pipelines import load_adapter
    from erase.cli.tuning import tune

    methods, milestones, forget_classes, every_spec, multi_classes = checked_options(args)
    started = time.time()
    base = load_adapter(args.model)
    if base.backbone != "cfg_unet":
        raise UsageError(f"the benchmark compares class erasure on a CFG UNet written by `erase train`; got {base.backbone}")
    base.check_class_ids(forget_classes + (every_spec if isinstance(every_spec, list) else []) + (multi_classes or []))
    record, _ = training_recipe(args.model)
    classifier = load_classifier("digits")
    resolution = base.image_shape[-1]
    args.out.mkdir(parents=True, exist_ok=True)
    tuning = tune(args, methods, classifier, record, resolution) if args.tune else None
    bench = Bench(args, base, record["data"], load_dataset(record["data"], resolution), classifier,
                  settings={m: tuning["chosen"][m]["flags"] if tuning else SETTINGS[m] for m in methods},
                  seeds={m: [args.seed + k for k in range(args.extra_seeds + 1)] for m in methods},
                  guidance=base.info.get("guidance_scale", 1.0))
    bench.base_samples = bench.sample(base, args.model, "base", "base")
    rows, grids, curves, taus = [], {}, {}, []
    for forget_class in forget_classes:
        class_rows(bench, methods, forget_class, milestones, rows, grids, curves, taus)
    every_digit = None
    if every_spec != "none":
        every_digit = every_digit_section(bench, every_spec, tuning, methods, forget_classes)
    multi = None
    if multi_classes is not None:
        started_multi = time.time()
        pair = [m for m in ("sfron", tuning["best_baseline"]) if m in methods]
        multi = multi_concept(args, bench.data_name, multi_classes, pair, bench.settings, bench.guidance, classifier,
                              bench.sample, bench.base_samples, forget_classes)
        multi["seconds"] = time.time() - started_multi
        bench.run_seconds["multi_concept"] = multi["run_seconds"]
    results = {
        "command": "benchmark", "model": str(args.model), "guidance_scale": bench.guidance,
        "forget_classes": forget_classes, "methods": methods, "per_class": args.per_class,
        "sample_steps": args.sample_steps, "seed": args.seed, "seeds": bench.seeds, "monitor_every": args.monitor_every,
        "monitor_samples": args.monitor_samples, "steps_override": args.steps, "rt_steps_override": args.rt_steps,
        "settings": bench.settings, "scaling": SCALING_NOTE, "tuning": tuning, "relearn_images": RELEARN_IMAGES,
        "nabla_tau": taus, "every_digit": every_digit, "multi_concept": multi,
        "inversion": {"images": INVERSION_IMAGES, "steps": args.inversion_steps,
                      "lr": INVERSION_LR} if args.inversion_steps else None,
        "collapse_reasons": {m: COLLAPSE_REASONS[m] for m in methods if m in COLLAPSE_REASONS},
        "rows": rows, "fa_curves": curves, "started": started, "seconds": time.time() - started,
        "run_seconds": {**bench.run_seconds, "tuning": tuning["run_seconds"] if tuning else 0.0},
        "environment": environment(),
    }
    write_json(args.out / "results.json", results)
    report = write_report(results, grids, args.report_dir or args.out)
    print(f"results: {args.out / 'results.json'}   report: {report}")


def class_rows(bench: Bench, methods: list, forget_class: int, milestones, rows: list, grids: dict, curves: dict,
               taus: list) -> None:
    """The base, RT and every method's rows for one test digit, with its grid column, FA curves and tau record."""
    import torch

    from erase.cli.harness import model_digest
    from erase.eval.class_scores import class_scores, real_reference
    from erase.pipelines import load_adapter

    args, classifier, base, run_seconds = bench.args, bench.classifier, bench.base, bench.run_seconds
    real = real_reference(classifier, bench.data_name, base.image_shape[-1], [forget_class], args.cache_dir)
    forget_images = bench.data.images[bench.data.labels == forget_class][:RELEARN_IMAGES]
    real_images = forget_images, torch.full((len(forget_images),), forget_class, dtype=torch.long)
    rt_folder = retrained_model(args, args.model, forget_class, bench.guidance)
    rt_record = json.loads((rt_folder / "run.json").read_text())
    rt_seconds = rt_record["timings"]["train"]
    run_seconds["rt"] += rt_seconds
    rt = load_adapter(rt_folder)
    rt_samples = bench.sample(rt, rt_folder, f"RT without {forget_class}", f"RT-{forget_class}")
    grids[forget_class] = {"base": bench.base_samples.column(), "RT": rt_samples.column()}
    rows.append({"class": forget_class, "method": "base", "seed": args.seed, "steps": 0, "seconds": 0.0,
                 "fraction_of_rt": 0.0, "first_step_fa_below_5pct": None,
                 "fa_inversion": inversion_fa(args, base, args.out / "attacks" / f"base-{forget_class}.json",
                                              {"model": model_digest(args.model)}, bench.data_name, forget_class,
                                              classifier, run_seconds),
                 **class_scores(bench.base_samples, [forget_class], classifier, real, rt_samples)})
    rt_key = {"rt": json.loads((rt_folder / "benchmark-flags.json").read_text())}
    rows.append({"class": forget_class, "method": "RT", "seed": args.seed, "steps": rt_record["config"]["steps"],
                 "seconds": rt_seconds, "fraction_of_rt": 1.0, "first_step_fa_below_5pct": None,
                 "relearn": relearning(args, milestones, rt, args.out / "relearn" / f"RT-{forget_class}", rt_key,
                                       real_images, forget_class, classifier),
                 "fa_inversion": inversion_fa(args, rt, args.out / "attacks" / f"RT-{forget_class}.json", rt_key,
                                              bench.data_name, forget_class, classifier, run_seconds),
                 **class_scores(rt_samples, [forget_class], classifier, real, None)})
    for method in methods:
        for seed in bench.seeds[method]:
            rows.append(method_row(bench, method, seed, forget_class, milestones, real, real_images, rt, rt_samples,
                                   rt_seconds, grids, curves, taus))


def method_row(bench: Bench, method: str, seed: int, forget_class: int, milestones, real, real_images, rt, rt_samples,
               rt_seconds: float, grids: dict, curves: dict, taus: list) -> dict:
    """One method's run on one digit and seed, scored; the first seed's also gives the grid column, FA curve,
    relearning curve, inversion FA and (Nabla-tau) tau record."""
    from erase.eval.class_scores import class_scores
    from erase.eval.probe import first_step_below
    from erase.pipelines import load_adapter

    args, classifier = bench.args, bench.classifier
    first = seed == args.seed
    folder, run_record = erased_model(args, bench.data_name, method, forget_class, bench.settings[method], seed,
                                      probed=first)
    adapter = load_adapter(folder)
    samples = bench.sample(adapter, folder, f"{method} without {forget_class}, seed {seed}",
                           f"{folder.parent.name}-{folder.name}")
    seconds = method_seconds(run_record["timings"])
    bench.run_seconds["test"] += sum(run_record["timings"].values())
    history = run_record["monitor"]["history"] if run_record.get("monitor") else None
    if first:
        grids[forget_class][method] = samples.column()
        curves.setdefault(forget_class, {})[method] = history
        if method == "nabla_tau":
            taus.append(tau_reference(bench.base, rt, adapter, bench.data, forget_class, run_record, args.seed))
    return {"class": forget_class, "method": method, "seed": seed, "steps": run_record["config"]["steps"],
            "seconds": seconds, "fraction_of_rt": seconds / rt_seconds,
            "first_step_fa_below_5pct": first_step_below(history, 0.05) if history else None,
            "settings": bench.settings[method], "mask_sparsity": run_record["mask_sparsity"],
            "relearn": relearning(args, milestones, adapter, folder, {"run": str(folder)}, real_images,
                                  forget_class, classifier) if first else None,
            "fa_inversion": inversion_fa(args, adapter, folder / "inversion.json", {"run": str(folder)},
                                         bench.data_name, forget_class, classifier, bench.run_seconds)
            if first else None,
            **class_scores(samples, [forget_class], classifier, real, rt_samples)}


def every_digit_section(bench: Bench, every_spec, tuning: dict, methods: list, forget_classes: list) -> dict:
    """SFR-on and the best baseline on every digit but the development ones (or the digits named), one seed."""
    import time

    from erase.eval.class_scores import class_scores
    from erase.pipelines import load_adapter

    args, classifier, base = bench.args, bench.classifier, bench.base
    started = time.time()
    digits = every_spec if isinstance(every_spec, list) else \
        [c for c in range(base.num_classes) if c not in tuning["dev_classes"]]
    pair = [m for m in ("sfron", tuning["best_baseline"]) if m in methods]
    per_class = args.all_digits_per_class
    base_many = bench.sample(base, args.model, "base", f"base-{per_class}", per_class)
    before_all = {digit: class_scores(base_many, [digit], classifier) for digit in digits}
    every_digit = {"digits": digits, "methods": pair, "per_class": per_class, "seed": args.seed, "rows": []}
    for method in pair:
        for digit in digits:  # a test digit reuses its probed seed-0 run
            folder, run_record = erased_model(args, bench.data_name, method, digit, bench.settings[method], args.seed,
                                              probed=digit in forget_classes)
            many = bench.sample(load_adapter(folder), folder, f"{method} without {digit}",
                                f"every-{folder.name}-{per_class}", per_class)
            mine, before = class_scores(many, [digit], classifier), before_all[digit]
            if digit not in forget_classes:  # the test digits' runs are counted with the test runs
                bench.run_seconds["every_digit"] = (bench.run_seconds.get("every_digit", 0.0)
                                                    + sum(run_record["timings"].values()))
            every_digit["rows"].append({
                "method": method, "class": digit, "fa": mine["forgetting_accuracy"],
                "ra": mine["remaining_accuracy_mean"], "base_fa": before["forgetting_accuracy"],
                "base_ra": before["remaining_accuracy_mean"]})
    every_digit["seconds"] = time.time() - started
    return every_digit
