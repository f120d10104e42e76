"""The benchmark's tuning protocol: one budget of configurations per method, tried on development digits
that are not test digits, and a selection rule fixed before any run.

GRIDS holds every method's configurations as `erase unlearn` flags (at most BUDGET each). Each grid is a star around
the method's published setting under this project's conventions (erase/cli/benchmark.py SETTINGS, SCALING_NOTE): that
setting, then one other value on each of the two axes every method shares in kind, one axis at a time: the learning
rate and its main weight (forget or remain weight, eta, EWC lambda, tau factor); Nabla-tau also tries the authors'
plain ascent beside its directed form. Iterations stay at each method's benchmark setting and FA is probed along them in the
test runs. 3 of the budget of 8 are used (5 for Nabla-tau): docs/benchmark.md states the measured time.
`erase benchmark --tune` runs them (`tune`) and takes `select`'s choice per method to the test digits.
"""

from __future__ import annotations

from itertools import product

BUDGET = 8  # configurations per method
FA_MAX = 0.05  # a configuration "erases" when its mean FA over the development digits is at most this


def flag_parts(name: str, value) -> tuple:
    """`erase unlearn` spelling of one setting: ("--lr", 0.001); a switch is the flag alone (True) or --no-flag."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return (f"--{flag}",) if value else (f"--no-{flag}",)
    return f"--{flag}", value


def grid(**axes) -> list[list]:
    """Every combination of `axes` (flag name without dashes -> values) as a flag list, in the order given."""
    names = list(axes)
    return [[part for name, value in zip(names, values) for part in flag_parts(name, value)]
            for values in product(*(axes[name] for name in names))]


def star(center: dict, fixed: dict | None = None, **others) -> list[list]:
    """`center` (flag name -> value) first, then each value in `others` (flag name -> values) changed one flag at a
    time from it; `fixed` flags join every configuration. Flag lists as `grid` spells them."""
    rows = [dict(center)] + [{**center, name: value} for name, values in others.items() for value in values]
    return [grid(**{name: [value] for name, value in {**row, **(fixed or {})}.items()})[0] for row in rows]


GRIDS = {
    # SFR-on DDPM: lr 1e-4, forget_alpha 10 (the cfg_unet preset: 2e-4 for 120 iterations); 5 halves the ascent.
    "sfron": star({"lr": 2e-4, "forget_alpha": 10}, lr=[1e-4], forget_alpha=[5]),
    "joint": star({"lr": 2e-4, "forget_alpha": 10}, lr=[1e-4], forget_alpha=[5]),
    # Nabla-tau at its cfg_unet preset (150 iterations, batch 64, --direction pseudo toward a random other class per
    # sample, lr 3e-4, tau 4x the starting forget loss), then one change at a time: the authors' lr 1e-3; toward the
    # next class instead; tau 2x (RT's loss on the forget digit is about twice the base's); and the authors' plain
    # ascent. What each alternative did on one seed: docs/presets.md and docs/nabla-tau.md.
    "nabla_tau": star({"lr": 3e-4, "tau_factor": 4, "direction": "pseudo"}, lr=[1e-3], pseudo_random=[False],
                      tau_factor=[2]) + grid(lr=[3e-4], tau_factor=[4], direction=["ascent"], gap_over=["batch"]),
    # SalUn DDPM: 1000 steps at 1e-5 (= 100 at 1e-4 at equal lr x steps), GA without a remain term; 3e-5 a third of
    # the ascent; remain weight 3.072 (SalUn's 1e-3 on a pixel sum) for RL, SalUn and as GA's other weight.
    "ga": star({"lr": 1e-4, "remain_alpha": 0}, {"steps": 100, "batch_size": 64}, lr=[3e-5], remain_alpha=[3.072]),
    "rl": star({"lr": 1e-4, "remain_alpha": 3.072}, {"steps": 100, "batch_size": 64}, lr=[2e-4], remain_alpha=[1.536]),
    "salun": star({"lr": 1e-4, "remain_alpha": 3.072}, {"steps": 100, "batch_size": 64}, lr=[2e-4],
                  remain_alpha=[1.536]),
    # ESD: 1000 steps at 1e-5 (100 at 1e-4), eta 1 (its default) or 2.
    "esd": star({"lr": 1e-4, "eta": 1}, {"steps": 100}, lr=[3e-5], eta=[2]),
    # SA: 100 steps at 1e-3 (SA's DDPM config: 20000 at 1e-4, batch 128), EWC lambda 100 or 10 on erase's pixel-mean
    # losses and batch Fisher; SA's own lambda 10 is about 3.5e9 in these conventions (docs/baselines.md), so both
    # leave EWC negligible and generative replay does the retaining.
    "sa": star({"lr": 1e-3, "ewc_lambda": 100}, {"steps": 100, "batch_size": 64}, lr=[3e-4], ewc_lambda=[10]),
}
DEV_CLASSES = "5"  # development digits: tuned on, never tested on
TUNE_PER_CLASS = 20  # samples per class when scoring a tuning run


def select(rows: list[dict], fa_max: float = FA_MAX) -> dict:
    """The rule fixed in advance: among rows (each with mean "fa" and "ra" over the development digits) with
    FA <= fa_max, the highest RA; if none erases, the lowest FA. Ties keep the earlier row (the grid's order)."""
    if not rows:
        raise ValueError("no configurations to choose from")
    erasing = [row for row in rows if row["fa"] <= fa_max]
    if erasing:
        return max(erasing, key=lambda row: row["ra"])  # max keeps the first of equal keys
    return min(rows, key=lambda row: row["fa"])


def best_baseline(chosen: dict[str, dict], ours: tuple[str, ...] = ("sfron", "joint")) -> str | None:
    """The baseline whose chosen configuration wins under the same rule on the development digits."""
    rows = [{**row, "method": method} for method, row in chosen.items() if method not in ours]
    return select(rows)["method"] if rows else None


def tune(args, methods: list[str], classifier, record: dict, resolution: int) -> dict:
    """Every configuration of GRIDS[method] on each development digit (cached in OUT/tune), scored with
    args.tune_per_class samples per class; the sweep, the configuration `select` picks per method, the base model's
    scores on the development digits and the best baseline."""
    from erase.data import parse_class_ids
    from erase.eval.class_scores import class_scores, real_reference, sample_classes
    from erase.pipelines import load_adapter
    from erase.cli.harness import cached_json, cached_unlearn, method_seconds

    dev_classes = parse_class_ids(args.dev_classes)
    overlap = sorted(set(dev_classes) & set(parse_class_ids(args.forget_classes)))
    if overlap:
        from erase.errors import UsageError

        raise UsageError(f"--dev-classes {overlap} are also test digits (--forget-classes); tune on other digits")
    score_key = {"per_class": args.tune_per_class, "sample_steps": args.sample_steps, "seed": args.seed}
    reals = {c: real_reference(classifier, record["data"], resolution, [c], args.cache_dir) for c in dev_classes}

    def scores(adapter, dev_class: int, name: str) -> dict:
        samples = sample_classes(adapter, args.tune_per_class, args.seed, args.sample_steps, description=f"sample {name}")
        s = class_scores(samples, [dev_class], classifier, reals[dev_class])
        return {"fa": s["forgetting_accuracy"], "ra": s["remaining_accuracy_mean"], "fid": s["fid_real"]}

    def mean(rows: list[dict]) -> dict:
        return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}

    base = load_adapter(args.model)
    base_scores = mean([cached_json(args.out / "tune" / f"base-class-{c}.json", {**score_key, "model": str(args.model)},
                                    lambda c=c: scores(base, c, f"base, class {c}")) for c in dev_classes])
    sweep, chosen, compute = {}, {}, 0.0
    for method in methods:
        rows = []
        for index, flags in enumerate(GRIDS[method]):
            per_digit = []
            for dev_class in dev_classes:
                folder = args.out / "tune" / f"{method}-{index}-class-{dev_class}"
                run_record = cached_unlearn(folder, ["--model", args.model, "--data", record["data"],
                                                     "--forget-class", dev_class, "--method", method, *flags,
                                                     "--seed", args.seed, *(["--steps", args.steps] if args.steps else [])])
                result = cached_json(folder / "tune-scores.json", score_key, lambda: scores(
                    load_adapter(folder), dev_class, f"{method} #{index}, class {dev_class}"))
                per_digit.append({**result, "seconds": method_seconds(run_record["timings"])})
                compute += sum(run_record["timings"].values())
            rows.append({"config": index, "flags": [str(f) for f in flags], **mean(per_digit)})
        sweep[method] = rows
        chosen[method] = select(rows)
    return {"dev_classes": dev_classes, "per_class": args.tune_per_class, "budget": BUDGET, "fa_max": FA_MAX,
            "sweep": sweep, "chosen": chosen, "base": base_scores, "best_baseline": best_baseline(chosen),
            "run_seconds": compute}
