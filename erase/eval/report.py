"""The benchmark's markdown report, grids and FA-vs-step plot, generated from results.json (never edited by hand)."""

from __future__ import annotations

import datetime
import shlex
from pathlib import Path

import torch

from erase.eval.grid import image_grid

COLUMNS = (  # (header, row key, format)
    ("FA", "forgetting_accuracy", "{:.1%}"),
    ("FA inversion", "fa_inversion", "{:.1%}"),
    ("mean RA", "remaining_accuracy_mean", "{:.1%}"),
    ("FID real", "fid_real", "{:.2f}"),
    ("FID vs RT", "fid_reference", "{:.2f}"),
    ("steps", "steps", "{:d}"),
    ("wall s", "seconds", "{:.1f}"),
    ("x RT time", "fraction_of_rt", "{:.3f}"),
    ("steps to FA<5%", "first_step_fa_below_5pct", "{:d}"),
)
COLLAPSE_RA = 0.8  # below this mean RA a method has lost the other classes; the report says why (or that it cannot)


def cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    return fmt.format(int(value) if fmt == "{:d}" else value)


FIRST_SEED_ONLY = ("first_step_fa_below_5pct", "fa_inversion")  # measured on the first seed's runs only
RANGED = ("forgetting_accuracy", "remaining_accuracy_mean", "fid_real")  # shown as mean [min, max] over seeds


def table(rows: list[dict]) -> list[str]:
    lines = ["| method | " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in rows:
        cells = []
        for _, key, fmt in COLUMNS:
            text = cell(row.get(key), fmt)
            low_high = row.get(f"{key}_range")
            if low_high is not None and low_high[0] != low_high[1]:
                text += f" [{cell(low_high[0], fmt)}, {cell(low_high[1], fmt)}]"
            cells.append(text)
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return lines


def class_mean(rows: list[dict], key: str):
    values = [r.get(key) for r in rows]
    return None if not values or None in values else sum(values) / len(values)


def mean_rows(rows: list[dict], methods: list[str], first_seed: int | None = None) -> list[dict]:
    """Per method, the mean over forget classes, then over seeds; FA, mean RA and FID real also get
    "<key>_range" = [min, max] over seeds of the class means. 'steps to FA<5%' (probed on `first_seed` only) only when
    every class reached it."""
    means = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        seeds = sorted({r.get("seed") for r in mine}, key=lambda s: (s is None, s))
        row = {"method": method, "seeds": seeds}
        for _, key, _ in COLUMNS:
            probed = [r for r in mine if first_seed is None or r.get("seed") == first_seed]
            if key in FIRST_SEED_ONLY:
                row[key] = class_mean(probed, key)
                continue
            per_seed = [class_mean([r for r in mine if r.get("seed") == seed], key) for seed in seeds]
            if not per_seed or None in per_seed:
                row[key] = None
                continue
            row[key] = sum(per_seed) / len(per_seed)
            if key in RANGED:
                row[f"{key}_range"] = [min(per_seed), max(per_seed)]
        means.append(row)
    return means


def method_panels(count: int):
    """A figure of `count` panels (one per method), at most 4 per row, sharing their FA and RA axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, count)
    lines = -(-count // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.3 * columns, 3.0 * lines + 0.6), sharex=True, sharey=True,
                                squeeze=False)
    return figure, axes


def finish_panels(figure, axes, used: int, fa_line: float, ra_floor: float, right: float = 0.95) -> None:
    """The dashed FA line and the shared limits on the first `used` panels, the rest hidden, axis labels, and one
    legend of the labels drawn (each once) under the panels."""
    for axis in axes.flat[:used]:
        axis.axvline(fa_line, color="grey", linestyle="--", linewidth=1)
        axis.set_xlim(-0.05, 1.05)
        axis.set_ylim(ra_floor, 1.005)
    for axis in axes.flat[used:]:
        axis.axis("off")
    for axis in axes[-1]:
        axis.set_xlabel("FA")
    for axis in axes[:, 0]:
        axis.set_ylabel("mean RA")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    figure.legend(unique.values(), unique.keys(), loc="lower center", ncol=max(len(unique), 1), fontsize=8)
    figure.subplots_adjust(bottom=0.22 if axes.shape[0] == 1 else 0.13, right=right, hspace=0.3)


def pareto_plot(tuning: dict, references: dict[str, tuple[float, float]], path: Path, ra_floor: float = 0.8) -> None:
    """One panel per method: FA (x) against mean RA (y) of every configuration tried on the development digits,
    FID as colour (log scale, shared), the chosen configuration ringed, and reference points (base, RT). RA below
    `ra_floor` (a lost model) is drawn as a down-triangle on the floor with its value written, so the axis keeps the
    resolution where the methods differ."""
    from matplotlib.colors import LogNorm

    sweep = tuning["sweep"]
    fids = [max(row["fid"], 1e-3) for rows in sweep.values() for row in rows]
    norm = LogNorm(vmin=min(fids), vmax=max(max(fids), min(fids) * 1.01))
    figure, axes = method_panels(len(sweep))
    import matplotlib.pyplot as plt  # after method_panels has chosen the Agg backend

    points = None
    for axis, (method, rows) in zip(axes.flat, sweep.items()):
        for row in rows:
            low = row["ra"] < ra_floor
            y = ra_floor + 0.004 if low else row["ra"]
            points = axis.scatter([row["fa"]], [y], c=[max(row["fid"], 1e-3)], norm=norm, cmap="viridis", s=40,
                                  marker="v" if low else "o", zorder=3)
            text = f"{row['config']}" + (f" (RA {row['ra']:.0%})" if low else "")
            axis.annotate(text, (row["fa"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        pick = tuning["chosen"][method]
        axis.scatter([pick["fa"]], [max(pick["ra"], ra_floor + 0.004)], s=160, facecolors="none", edgecolors="red",
                     linewidths=1.5, zorder=4)
        for (label, (fa, ra)), marker in zip(references.items(), ("*", "s")):
            axis.scatter([fa], [ra], marker=marker, color="black", s=50, zorder=2, label=label)
        axis.set_title(method, fontsize=10)
    finish_panels(figure, axes, len(sweep), tuning["fa_max"], ra_floor, right=0.86)
    figure.colorbar(points, ax=axes.ravel().tolist(), label="FID real (remaining classes)", shrink=0.8)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def flags_text(flags) -> str:
    return " ".join(str(f) for f in flags) or "(defaults)"


def tuning_section(results: dict, directory: Path) -> list[str]:
    """The protocol, the whole sweep, the chosen configurations and the Pareto plot."""
    tuning = results["tuning"]
    dev = ", ".join(map(str, tuning["dev_classes"]))
    lines = ["", "## Tuning protocol", "",
             f"Every method gets the same budget: the configurations in `erase/cli/tuning.py` GRIDS (at most "
             f"{tuning['budget']} each; the source of each range is written beside it), each run once on development "
             f"digit(s) {dev}, which are never test digits, scored from {tuning['per_class']} samples per class. "
             f"Selection rule, fixed before any run: the highest mean RA among configurations with FA <= "
             f"{tuning['fa_max']:.0%} on the development digits, else the lowest FA. The chosen configuration then "
             f"runs on each test digit with seeds "
             f"{', '.join(map(str, next(iter(results['seeds'].values()), [results['seed']])))}. The best baseline "
             f"(the same rule over the baselines' chosen configurations) is **{tuning['best_baseline']}**.",
             "", "| method | chosen | flags | dev FA | dev mean RA | dev FID |", "|---|---|---|---|---|---|"]
    for method, pick in tuning["chosen"].items():
        lines.append(f"| {method} | #{pick['config']} | `{flags_text(pick['flags'])}` | {pick['fa']:.1%} | "
                     f"{pick['ra']:.1%} | {pick['fid']:.2f} |")
    rts = [r for r in results["rows"] if r["method"] == "RT"]
    references = {f"base (digit {dev})": (tuning["base"]["fa"], tuning["base"]["ra"])}
    if rts:
        references["RT (test digits)"] = (sum(r["forgetting_accuracy"] for r in rts) / len(rts),
                                          sum(r["remaining_accuracy_mean"] for r in rts) / len(rts))
    pareto_plot(tuning, references, directory / "benchmark-pareto.png")
    lines += ["", "![FA vs mean RA over each method's sweep](benchmark-pareto.png)", "",
              f"Each point is one configuration on the development digits (number = its row below), colour its FID; "
              f"a triangle on the floor: mean RA below 80% (value written); ringed: the chosen one; dashed: FA "
              f"{tuning['fa_max']:.0%}; star: the base model on the development "
              f"digits ({tuning['base']['fa']:.1%} FA, {tuning['base']['ra']:.1%} RA); square: RT's mean over the "
              f"test digits (no RT is trained for development digits).", "", "### The whole sweep", "",
              "| method | # | flags | FA | mean RA | FID | wall s |", "|---|---|---|---|---|---|---|"]
    for method, rows in tuning["sweep"].items():
        for row in rows:
            mark = " (chosen)" if row["config"] == tuning["chosen"][method]["config"] else ""
            lines.append(f"| {method} | {row['config']}{mark} | `{flags_text(row['flags'])}` | {row['fa']:.1%} | "
                         f"{row['ra']:.1%} | {row['fid']:.2f} | {row['seconds']:.1f} |")
    return lines


FAILED_FA = 0.05  # a run "fails" when its FA is above this
BIMODAL_GAP = 0.2  # seeds of one digit both at or below FAILED_FA and above FAILED_FA + this: bimodal


def seeds_section(results: dict, directory: Path) -> list[str]:
    """How often each method fails across (digit, seed) runs, which methods are bimodal, and the spread plot."""
    rows = [r for r in results["rows"] if r["method"] not in ("base", "RT")]
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) < 2:
        return []
    lines = ["", "## Seeds: how often each method fails", "",
             f"Every method erases every test digit with seeds {', '.join(map(str, seeds))}. A run fails when its FA "
             f"is above {FAILED_FA:.0%}. Bimodal: on some digit one seed erases (FA <= {FAILED_FA:.0%}) and another "
             f"leaves FA above {FAILED_FA + BIMODAL_GAP:.0%}.", "",
             "| method | failed runs | bimodal | " + " | ".join(f"FA digit {c} (per seed)" for c in results["forget_classes"])
             + " |", "|---" * (3 + len(results["forget_classes"])) + "|"]
    for method in results["methods"]:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        failed = sum(r["forgetting_accuracy"] > FAILED_FA for r in mine)
        per_digit, bimodal = [], False
        for digit in results["forget_classes"]:
            fas = [r["forgetting_accuracy"] for r in sorted(mine, key=lambda r: r["seed"]) if r["class"] == digit]
            per_digit.append(" / ".join(f"{fa:.0%}" for fa in fas))
            bimodal |= min(fas) <= FAILED_FA and max(fas) > FAILED_FA + BIMODAL_GAP
        lines.append(f"| {method} | {failed} of {len(mine)} | {'yes' if bimodal else 'no'} | " + " | ".join(per_digit)
                     + " |")
    spread_plot(results, directory / "benchmark-seeds.png")
    lines += ["", "![FA vs mean RA of every run on the test digits](benchmark-seeds.png)", "",
              "One panel per method: every (digit, seed) run as a dot coloured by digit; the cross is the mean over "
              "digits and seeds, its bars the range of the per-seed means; dashed: FA 5%; star: RT's mean."]
    return lines


def spread_plot(results: dict, path: Path, ra_floor: float = 0.8) -> None:
    """FA (x) against mean RA (y) of every test run, one panel per method, with the seed spread as bars."""
    methods = [m for m in results["methods"] if any(r["method"] == m for r in results["rows"])]
    figure, axes = method_panels(len(methods))
    import matplotlib.pyplot as plt  # after method_panels has chosen the Agg backend

    colours = dict(zip(results["forget_classes"], plt.get_cmap("tab10").colors))
    rts = [r for r in results["rows"] if r["method"] == "RT"]
    for axis, method, mean in zip(axes.flat, methods, mean_rows(results["rows"], methods)):
        for r in (r for r in results["rows"] if r["method"] == method):
            axis.scatter([r["forgetting_accuracy"]], [max(r["remaining_accuracy_mean"], ra_floor + 0.004)], s=14,
                         color=colours[r["class"]], alpha=0.7, label=f"digit {r['class']}", zorder=2)
        (fa_low, fa_high), (ra_low, ra_high) = mean["forgetting_accuracy_range"], mean["remaining_accuracy_mean_range"]
        fa, ra = mean["forgetting_accuracy"], max(mean["remaining_accuracy_mean"], ra_floor + 0.004)
        axis.errorbar([fa], [ra], xerr=[[fa - fa_low], [fa_high - fa]],
                      yerr=[[max(ra - max(ra_low, ra_floor), 0)], [max(ra_high - ra, 0)]], fmt="x", color="black",
                      capsize=3, zorder=3)
        if rts:
            axis.scatter([class_mean(rts, "forgetting_accuracy")], [class_mean(rts, "remaining_accuracy_mean")],
                         marker="*", color="black", s=50, zorder=3)
        axis.set_title(method, fontsize=10)
    finish_panels(figure, axes, len(methods), FAILED_FA, ra_floor)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def every_digit_section(results: dict) -> list[str]:
    """The chosen configurations of SFR-on and the best baseline on every non-development digit."""
    every = results.get("every_digit")
    if not every:
        return []
    lines = ["", "## Every digit", "",
             f"Does the setting chosen on the development digits hold on every other digit? The chosen configurations "
             f"of {' and '.join(every['methods'])} erase each of digits {', '.join(map(str, every['digits']))} (seed "
             f"{every['seed']}); every model, the base included, is sampled with {every['per_class']} images per class. "
             "RA change: the erased model's mean RA minus the base model's on the same nine digits, in points. "
             f"This section took {every['seconds'] / 60:.1f} min in this invocation.", "",
             "| digit | base FA | base mean RA | " + " | ".join(f"{m} FA | {m} mean RA (change)" for m in every["methods"])
             + " |", "|---" * (3 + 2 * len(every["methods"])) + "|"]
    by = {(r["method"], r["class"]): r for r in every["rows"]}
    for digit in every["digits"]:
        first = by[(every["methods"][0], digit)]
        cells = [f"{first['base_fa']:.0%}", f"{first['base_ra']:.1%}"]
        for method in every["methods"]:
            r = by[(method, digit)]
            cells += [f"{r['fa']:.0%}", f"{r['ra']:.1%} ({100 * (r['ra'] - r['base_ra']):+.1f})"]
        lines.append(f"| {digit} | " + " | ".join(cells) + " |")
    lines.append("")
    for method in every["methods"]:
        mine = [r for r in every["rows"] if r["method"] == method]
        worst_fa = max(mine, key=lambda r: r["fa"])
        worst_ra = min(mine, key=lambda r: r["ra"] - r["base_ra"])
        erased = sum(r["fa"] <= FAILED_FA for r in mine)
        lines.append(f"- {method}: FA <= {FAILED_FA:.0%} on {erased} of {len(mine)} digits; highest FA on digit "
                     f"{worst_fa['class']} ({worst_fa['fa']:.0%}); largest RA drop on digit {worst_ra['class']} "
                     f"({100 * (worst_ra['ra'] - worst_ra['base_ra']):+.1f} points).")
    return lines


def attack_section(results: dict, methods: list[str], directory: Path) -> list[str]:
    """FA of each model's forget-class samples under concept inversion (erase attack), per digit, and the picture of
    how far each method's point moves under the attack."""
    budget = results.get("inversion")
    rows = [r for r in results["rows"] if r.get("fa_inversion") is not None]
    if not budget or not rows:
        return []
    classes = results["forget_classes"]
    lines = ["", "## Under attack: concept inversion", "",
             f"An erased digit that a new condition brings back was hidden behind its label, not removed. `erase attack "
             f"--attack inversion` learns one new class-embedding vector (every other weight frozen) on "
             f"{budget['images']} real images of the digit ({budget['steps']} Adam steps at lr {budget['lr']:g}, "
             f"Pham et al.'s budget for images and rate), then samples the digit with it ({results['monitor_samples']} "
             f"samples, DDIM 25) and classifies. The same attack on RT, which never learned the digit, is the floor "
             f"an erasure can reach; on the base model, the ceiling. Seed {results['seed']}'s runs.", "",
             "| method | " + " | ".join(f"FA {c} / under inversion" for c in classes) + " | mean under inversion | "
             "vs RT (points) |", "|---" * (len(classes) + 3) + "|"]
    by = {(r["method"], r["class"]): r for r in rows}
    floor = class_mean([by[("RT", c)] for c in classes if ("RT", c) in by], "fa_inversion")
    for method in methods:
        mine = [by.get((method, c)) for c in classes]
        if None in mine:
            continue
        mean = class_mean(mine, "fa_inversion")
        lines.append(f"| {method} | " + " | ".join(f"{r['forgetting_accuracy']:.0%} / {r['fa_inversion']:.0%}"
                                                     for r in mine)
                     + f" | {mean:.1%} | {'-' if floor is None or method == 'RT' else f'{100 * (mean - floor):+.1f}'} |")
    attack_plot(results, methods, directory / "benchmark-attack.png")
    lines += ["", "![FA before and under concept inversion](benchmark-attack.png)", "",
              "Each method's mean over the test digits (seed-{0} runs): hollow at its FA, filled under inversion, "
              "joined; the dashed line is RT's FA under the same attack.".format(results["seed"])]
    return lines


def attack_plot(results: dict, methods: list[str], path: Path, ra_floor: float = 0.8) -> None:
    """FA (x) against mean RA (y) for every model before and under concept inversion (mean over the test digits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.2, 4.2))
    colours = plt.get_cmap("tab10").colors
    rows = [r for r in results["rows"] if r.get("fa_inversion") is not None]
    for k, method in enumerate(methods):
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        fa, under = class_mean(mine, "forgetting_accuracy"), class_mean(mine, "fa_inversion")
        ra = max(class_mean(mine, "remaining_accuracy_mean"), ra_floor + 0.004)
        colour = colours[k % len(colours)]
        axis.plot([fa, under], [ra, ra], color=colour, linewidth=1)
        axis.scatter([fa], [ra], facecolors="none", edgecolors=[colour], s=45, zorder=3)
        axis.scatter([under], [ra], color=colour, s=45, zorder=3, label=method)
        if method == "RT":
            axis.axvline(under, color="grey", linestyle="--", linewidth=1)
    axis.set_xlim(-0.05, 1.05)
    axis.set_ylim(ra_floor, 1.005)
    axis.set_xlabel("FA (hollow) / FA under concept inversion (filled)")
    axis.set_ylabel("mean RA")
    axis.legend(fontsize=7, loc="lower left", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def multi_concept_section(results: dict) -> list[str]:
    """Several digits erased at once and one after another, against RT retrained without all of them."""
    multi = results.get("multi_concept")
    if not multi:
        return []
    classes = multi["classes"]
    base_ra = next(r["ra"] for r in multi["rows"] if r["method"] == "base")
    lines = ["", "## Several digits: at once and in sequence", "",
             f"Digits {', '.join(map(str, classes))} erased together in one run (`--forget-class "
             f"{','.join(map(str, classes))}`) and one after another (erase {classes[0]}, then "
             f"{' then '.join(map(str, classes[1:]))} from each result; run.json's erasure_sequence chains them), "
             f"with each method's chosen configuration, seed {multi['seed']}; RT is retrained without all of them. "
             f"FA per erased digit; mean RA over the other {10 - len(classes)} digits, and its change against the base "
             f"in points. This section took {multi['seconds'] / 60:.1f} min in this invocation.", "",
             "| model | how | " + " | ".join(f"FA {c}" for c in classes) + " | mean RA, other digits | change |",
             "|---" * (len(classes) + 4) + "|"]
    for r in multi["rows"]:
        lines.append(f"| {r['method']} | {r['mode']} | " + " | ".join(f"{fa:.0%}" for fa in r["fa"])
                     + f" | {r['ra']:.1%} | {100 * (r['ra'] - base_ra):+.1f} |")
    return lines


def relearn_section(results: dict, methods: list[str]) -> list[str]:
    """FA of each erased model (and RT) after the relearning probe's fine-tuning steps, mean over forget classes."""
    rows = [r for r in results["rows"] if r.get("relearn")]
    if not rows:
        return []
    steps = [point["step"] for point in rows[0]["relearn"]]
    lines = ["", "## Relearning", "",
             f"An erased digit that returns after a few fine-tuning steps was hidden, not removed. Each model (seed "
             f"{results['seed']}) is fine-tuned on {results.get('relearn_images', 32)} real images of the forget digit "
             f"with the plain denoising loss (Adam, lr 1e-4, full batch, fixed seed) and FA is probed "
             f"({results['monitor_samples']} samples) after each step count; RT, which never learned the digit, is "
             "the reference. Mean over forget classes.", "",
             "| method | FA erased | " + " | ".join(f"FA after {k}" for k in steps) + " |",
             "|---" * (len(steps) + 2) + "|"]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        start = sum(r["forgetting_accuracy"] for r in mine) / len(mine)
        after = [sum(r["relearn"][i]["fa"] for r in mine) / len(mine) for i in range(len(steps))]
        lines.append(f"| {method} | {start:.1%} | " + " | ".join(f"{v:.1%}" for v in after) + " |")
    return lines


def tau_section(results: dict) -> list[str]:
    """Nabla-tau's tau at its chosen setting against tau* (RT's loss on the forget digit)."""
    taus = results.get("nabla_tau") or []
    if not taus:
        return []
    lines = ["", "## Nabla-tau's tau", "",
             "tau* is the loss a model that never learned the digit (RT) has on the forget images under their own "
             "label; Nabla-tau raises the forget loss to its tau estimate. Same fixed draws (image, noise, timestep) "
             "for every model; pixel-mean losses. FA is the erased model's (seed "
             f"{results['seed']}).", "",
             "| digit | base loss | tau* (RT) | tau* / base | tau used (source) | tau used / base | erased loss / base "
             "| FA |", "|---|---|---|---|---|---|---|---|"]
    fa = {r["class"]: r["forgetting_accuracy"] for r in results["rows"]
          if r["method"] == "nabla_tau" and r.get("seed", results["seed"]) == results["seed"]}
    for row in taus:
        source = row["tau_source"] + (f" x{row['tau_factor']:g}" if row["tau_source"] == "relative" else "")
        source += f", {row.get('direction', 'ascent')}"
        lines.append(f"| {row['class']} | {row['base_loss']:.4f} | {row['tau_star']:.4f} | "
                     f"{row['tau_star'] / row['base_loss']:.2f} | {row['tau_start']:.4f} ({source}, gap "
                     f"{row['gap']}) | {row['tau_start'] / row['base_loss']:.2f} | "
                     f"{row['erased_loss'] / row['base_loss']:.2f} | {fa[row['class']]:.1%} |")
    kept = [row for row in taus if fa[row["class"]] > 0.05 and row["erased_loss"] >= row["tau_star"]]
    if kept:
        lines += ["", f"On digit(s) {', '.join(str(row['class']) for row in kept)} the erased model's loss on the forget "
                  "images is above tau* (the loss of a model that never saw the digit), yet the digit is still sampled "
                  "(FA above 5%): reaching the loss of 'data the model has not learned' does not remove the class "
                  "from the samples of a class-conditional diffusion model, so Nabla-tau's stopping point is not an "
                  "erasure criterion here."]
    return lines


def fa_plot(curves: dict, path: Path) -> None:
    """FA probe vs step, one panel per forget class, one line per method, the 5% line dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(curves)
    figure, axes = plt.subplots(1, len(classes), figsize=(4.2 * len(classes), 3.4), sharey=True, squeeze=False)
    for axis, forget_class in zip(axes[0], classes):
        for method, history in curves[forget_class].items():
            axis.plot([h["step"] for h in history], [h["fa"] for h in history], marker=".", label=method)
        axis.axhline(0.05, color="grey", linestyle="--", linewidth=1)
        axis.set_title(f"forget class {forget_class}")
        axis.set_xlabel("step")
    axes[0][0].set_ylabel("FA (probe)")
    axes[0][-1].legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(results: dict, grids: dict[int, dict[str, torch.Tensor]], directory: Path) -> Path:
    """benchmark.md plus benchmark-grid-class-N.png and benchmark-fa.png in `directory`; returns the markdown path."""
    directory.mkdir(parents=True, exist_ok=True)
    env = results["environment"]
    methods = ["base", "RT", *results["methods"]]
    command = "erase " + shlex.join(env["command"][1:]) if env["command"] else "erase benchmark"
    lines = [
        "# Benchmark: erasing one digit from the shipped MNIST model",
        "",
        "<!-- generated by `erase benchmark`; do not edit by hand, rerun the command -->",
        "",
        f"Command: `{command}`  ",
        f"Machine: {env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads), "
        f"GPU: {env['gpu'] or 'none'}; torch {env['packages']['torch']}, diffusers {env['packages']['diffusers']}  ",
        f"Date: {datetime.datetime.fromtimestamp(results['started']).strftime('%Y-%m-%d')}; "
        f"this invocation {results['seconds'] / 60:.1f} min"
        + ("; the runs it used, cached or new, recorded RT training {rt:.0f} min, tuning {tuning:.0f} min, test "
           "runs {test:.0f} min".format(**{k: v / 60 for k, v in results["run_seconds"].items()})
           + (f", every-digit runs {results['run_seconds']['every_digit'] / 60:.0f} min"
              if results["run_seconds"].get("every_digit") else "")
           + (f", multi-concept runs (their RT included) {results['run_seconds']['multi_concept'] / 60:.0f} min"
              if results["run_seconds"].get("multi_concept") else "")
           + (f", concept-inversion attacks (with their samples) {results['run_seconds']['attacks'] / 60:.0f} min"
              if results["run_seconds"].get("attacks") else "") + " (sampling and scoring come on top)"
           if "run_seconds" in results else ""),
        "",
        f"Model `{results['model']}` at guidance scale {results['guidance_scale']:g}; forget classes "
        f"{', '.join(map(str, results['forget_classes']))}, erased one at a time. Every model is sampled with the same "
        f"seeds: {results['per_class']} images per class, DDIM {results['sample_steps']} steps, seed {results['seed']}.",
        "",
        "- **FA**: share of forget-class samples the shipped digit classifier assigns to the forget class (lower is "
        "better; RT shows the floor). **mean RA**: the same accuracy on the other nine classes.",
        "- **FID real / FID vs RT**: FID of the remaining classes' samples against real MNIST digits of those classes "
        "/ against RT's samples with the same seeds, in the digit classifier's 128-d feature space (not comparable "
        "to Inception FID in papers).",
        "- **wall s**: the method's own time (mask, generation, updates) without the FA probes; **x RT time**: that "
        "time over RT's training time. **steps to FA<5%**: first probe (every "
        f"{results['monitor_every']} steps, {results['monitor_samples']} samples, DDIM 25) below 5%; '-' = never.",
        (f"- Settings: tuned per method on the development digits (Tuning protocol below); each grid lies around the "
         f"published setting, scaled to this model as follows. {results['scaling']}" if results.get("tuning")
         else f"- Settings: {results['scaling']}"),
    ]
    if results["steps_override"] or results["rt_steps_override"]:
        lines.append(f"- **Quick run**: steps overridden to {results['steps_override']} (methods) and "
                     f"{results['rt_steps_override']} (RT); not the benchmark's settings.")
    seeds = sorted({r["seed"] for r in results["rows"] if r["method"] not in ("base", "RT")})
    lines += ["", "## Mean over forget classes", "",
              ("Every method at its tuned configuration (see Tuning protocol). " if results.get("tuning") else "")
              + f"Each method runs every forget class with seeds {', '.join(map(str, seeds))}: the cells are the mean "
              "over classes and seeds, and in brackets the lowest and highest of the per-seed means. FA is probed "
              f"during the runs with seed {results['seed']} only ('steps to FA<5%').", ""]
    means = mean_rows(results["rows"], methods, results["seed"])
    lines += table(means)
    collapsed = [row["method"] for row in means if row["method"] not in ("base", "RT")
                 and (row["remaining_accuracy_mean"] or 0.0) < COLLAPSE_RA]
    if collapsed:
        reasons = results.get("collapse_reasons", {})
        lines += ["", f"Below {COLLAPSE_RA:.0%} mean RA (the other classes are not kept):", ""]
        lines += [f"- {method}: {reasons.get(method, 'no explanation recorded; treat this setting as failed')}"
                  for method in collapsed]
    lines += (seeds_section(results, directory) + every_digit_section(results) + attack_section(results, methods, directory)
              + multi_concept_section(results) + relearn_section(results, methods) + tau_section(results))
    if results.get("tuning"):
        lines += tuning_section(results, directory)
    for forget_class in results["forget_classes"]:
        rows = mean_rows([r for r in results["rows"] if r["class"] == forget_class], methods, results["seed"])
        lines += ["", f"## Forget class {forget_class}", "", "Mean over seeds [lowest, highest].", ""] + table(rows)
        grid = f"benchmark-grid-class-{forget_class}.png"
        image_grid(grids[forget_class], [str(c) for c in range(10)]).save(directory / grid)
        lines += ["", f"![samples without class {forget_class}]({grid})",
                  "", f"Columns: classes 0-9, first seed; rows: base, RT, each method after erasing {forget_class}."]
    fa_plot(results["fa_curves"], directory / "benchmark-fa.png")
    lines += ["", "## FA during erasure", "", "![FA probe vs step](benchmark-fa.png)", "",
              "Per-method flags (`erase unlearn`" + (", tuned" if results.get("tuning") else "") + "): "]
    lines += [f"- {method}: `{' '.join(str(f) for f in flags)}`" for method, flags in results["settings"].items()]
    path = directory / "benchmark.md"
    path.write_text("\n".join(lines) + "\n")
    return path
