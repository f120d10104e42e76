"""The text benchmark's report (docs/benchmark-text.md), grids and Pareto picture, generated from results.json."""

from __future__ import annotations

import shlex
from pathlib import Path

# (header, score key, format): the columns of every table, in UnlearnCanvas' order, then this project's
COLUMNS = [("UA", "unlearning_accuracy", "{:.1%}"), ("IRA", "in_domain_retain_accuracy", "{:.1%}"),
           ("CRA", "cross_domain_retain_accuracy", "{:.1%}"), ("kept", "kept", "{:.1%}"),
           ("FID vs RT", "fid_rt", "{:.2f}"), ("leak (spelling)", "leak_other_spelling", "{:.1%}"),
           ("leak (template)", "leak_unused_template", "{:.1%}"), ("time (s)", "seconds", "{:.0f}")]
HIGHER = {"unlearning_accuracy", "in_domain_retain_accuracy", "cross_domain_retain_accuracy", "kept"}
# UnlearnCanvas (Zhang et al., NeurIPS 2024 datasets track, table of style unlearning): published anchors
ANCHORS = ("UnlearnCanvas' published style unlearning (SD v1.5 fine-tuned on 60 styles x 20 objects, A6000): "
           "ESD UA 98.6% in 6163 s per erasure, SalUn UA 86.3% in 667 s. This benchmark is another scale (a 1.06M-"
           "parameter 16 px pixel-space model, 2 CPU cores): compare the ranking, not the numbers. Why ESD and SA "
           "run below their published DDPM strength in both benchmarks: docs/baselines.md.")


def value(row: dict, key: str):
    return row.get("seconds") if key == "seconds" else row["scores"].get(key)


def summary(rows: list[dict], key: str) -> tuple | None:
    """(mean, min, max) of `key` over `rows`, None where any row lacks it."""
    values = [value(r, key) for r in rows]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values), min(values), max(values)


def cell(stats, fmt: str) -> str:
    if stats is None:
        return "-"
    mean, low, high = stats
    text = fmt.format(mean)
    return text if low == high else f"{text} [{fmt.format(low)}, {fmt.format(high)}]"


def table(groups: dict[str, list[dict]]) -> list[str]:
    lines = ["| method | " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method, rows in groups.items():
        lines.append(f"| {method} | " + " | ".join(cell(summary(rows, key), fmt) for _, key, fmt in COLUMNS) + " |")
    return lines


def grouped(rows: list[dict], methods: list[str], concepts: list[str] | None = None) -> dict[str, list[dict]]:
    """base, RT and each method's rows (over seeds and, for the mean table, over concepts)."""
    keep = [r for r in rows if concepts is None or r["concept"] in concepts]
    return {m: [r for r in keep if r["method"] == m] for m in ["base", "RT", *methods]
            if any(r["method"] == m for r in keep)}


def targets(rows: list[dict], concepts: list[str]) -> list[str]:
    """SFR-on at its defaults against the issue's targets, per concept and seed (met or missed with the figure)."""
    lines = []
    for concept in concepts:
        base = next(r for r in rows if r["concept"] == concept and r["method"] == "base")["scores"]
        rt = next(r for r in rows if r["concept"] == concept and r["method"] == "RT")
        runs = [r for r in rows if r["concept"] == concept and r["method"] == "sfron"]
        if not runs:
            continue
        checks = []
        for r in runs:
            s = r["scores"]
            tests = [("UA >= 95%", s["unlearning_accuracy"] >= 0.95, f"{s['unlearning_accuracy']:.1%}"),
                     ("IRA within 3 points", s["in_domain_retain_accuracy"] >= base["in_domain_retain_accuracy"] - 0.03,
                      f"{s['in_domain_retain_accuracy']:.1%} vs {base['in_domain_retain_accuracy']:.1%}"),
                     ("CRA within 3 points",
                      s["cross_domain_retain_accuracy"] >= base["cross_domain_retain_accuracy"] - 0.03,
                      f"{s['cross_domain_retain_accuracy']:.1%} vs {base['cross_domain_retain_accuracy']:.1%}")]
            if concept.startswith("style:"):
                tests.append(("kept within 5 points", s["kept"] >= base["kept"] - 0.05,
                              f"{s['kept']:.1%} vs {base['kept']:.1%}"))
            if s.get("fid_rt") is not None and base.get("fid_rt"):
                tests.append(("FID <= 1.5x the base's against RT", s["fid_rt"] <= 1.5 * base["fid_rt"],
                              f"{s['fid_rt']:.2f} vs {base['fid_rt']:.2f}"))
            for key, name in (("leak_other_spelling", "spelling"), ("leak_unused_template", "template")):
                tests.append((f"leak ({name}) within 10 points of RT's",
                              abs(s[key] - rt["scores"][key]) <= 0.10, f"{s[key]:.1%} vs {rt['scores'][key]:.1%}"))
            checks.append((r["seed"], tests))
        for seed, tests in checks:
            met = [f"{name}: {'met' if ok else '**missed**'} ({figure})" for name, ok, figure in tests]
            lines.append(f"- {concept}, seed {seed}: " + "; ".join(met))
    return lines


def best_per_column(rows: list[dict], methods: list[str], concepts: list[str]) -> list[str]:
    """The best method per column over the test concepts (mean over seeds and concepts), its spread, and RT's."""
    groups = grouped(rows, methods, concepts)
    lines = []
    for header, key, fmt in COLUMNS[:-1]:
        stats = {m: summary(groups[m], key) for m in methods if m in groups}
        stats = {m: s for m, s in stats.items() if s is not None}
        rt = summary(groups.get("RT", []), key)
        if not stats:
            continue
        pick = max if key in HIGHER else min
        if key.startswith("leak") and rt is not None:  # a leak is best where it is closest to RT's
            best = min(stats, key=lambda m: abs(stats[m][0] - rt[0]))
        else:
            best = pick(stats, key=lambda m: stats[m][0])
        mean, low, high = stats[best]
        away = "" if rt is None else f"; RT {fmt.format(rt[0])}"
        lines.append(f"- {header}: **{best}** {fmt.format(mean)} (runs {fmt.format(low)} to {fmt.format(high)}){away}")
    return lines


def pareto_plot(rows: list[dict], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, key, name in ((axes[0], "in_domain_retain_accuracy", "IRA"), (axes[1], "cross_domain_retain_accuracy", "CRA")):
        for method in ["RT", *methods]:
            points = [(r["scores"][key], r["scores"]["unlearning_accuracy"]) for r in rows if r["method"] == method]
            if points:
                axis.scatter(*zip(*points), label=method, marker="*" if method == "RT" else "o", s=60, alpha=0.75)
        axis.set_xlabel(f"{name} (retain)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("UA (erased)")
    axes[1].legend(fontsize=8, loc="lower left")
    figure.suptitle("every test run: UA against IRA and CRA (top right is best)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def grid_picture(rows: list[dict], concept: str, methods: list[str], path: Path) -> bool:
    """Rows base, RT and each method's first-seed run; columns the grid samples of the concept's prompts. False
    (and no picture) when no row has grid samples."""
    import torch

    from erase.eval.grid import image_grid

    shown = {}
    for method in ["base", "RT", *methods]:
        first = [r for r in rows if r["concept"] == concept and r["method"] == method and r.get("grid")]
        if first:
            shown[method] = torch.tensor(first[0]["grid"], dtype=torch.uint8).float() / 255
    if not shown:
        return False
    if concept.startswith("style:"):
        labels = [f"digit {d}" for d in (0, 3, 4, 7)]
    else:
        from erase.styled import STYLE_KEYS

        labels = list(STYLE_KEYS[:3])
    image_grid(shown, labels).save(path)
    return True


def attack_table(rows: list[dict], concept: str, methods: list[str]) -> list[str]:
    """FA of the attacked prompt before and after each attack, for base, RT and each method's first-seed model."""
    attacked = {r["method"]: r["attacks"] for r in rows if r["concept"] == concept and r.get("attacks")}
    if not attacked:
        return []
    first = next(iter(attacked.values()))
    lines = [f"Attacks on `{first['prompt']}` ({first['images']} real renderings; inversion: one token in "
             f"`{first['template']}`; adversarial: tokens in front of the prompt), FA: the judge's share of the "
             "concept in the samples.", "", "| model | FA before | FA after inversion | FA after adversarial prompt |",
             "|---|---|---|---|"]
    for method in ["base", "RT", *methods]:
        if method in attacked:
            a = attacked[method]
            lines.append(f"| {method} | {a['fa_before']:.1%} | {a['fa_inversion']:.1%} | {a['fa_adversarial']:.1%} |")
    return lines + [""]


def write_report(results: dict, directory: Path) -> Path:
    """benchmark-text.md with its pictures in `directory`; returns the markdown path."""
    directory.mkdir(parents=True, exist_ok=True)
    rows, methods, concepts = results["rows"], results["methods"], results["concepts"]
    env = results["environment"]
    command = "erase " + shlex.join(env["command"][1:]) if env.get("command") else "erase benchmark-text"
    lines = ["<!-- generated by `erase benchmark-text`; do not edit by hand, rerun the command -->",
             "# Erasing styles and digits by their prompts: the text benchmark", "",
             f"Generated by `{command}` (finished units are reused from the record: `eval/benchmark-text/`).",
             f"Base: `{results['model']}` at guidance {results['guidance_scale']}; {results['per_prompt']} samples per "
             f"prompt, DDIM {results['sample_steps']}, seeds {results['seed']} to "
             f"{results['seed'] + results['extra_seeds']} per method and concept. Never erased (held-out styles): "
             f"{', '.join(results['held_out_styles'])}.", ""]
    if results.get("steps_override") or results.get("rt_steps_override"):
        lines += [f"**Quick check**: steps overridden to {results['steps_override']} (methods) and "
                  f"{results['rt_steps_override']} (RT); not the benchmark's settings.", ""]
    if results.get("tuning"):
        tuning = results["tuning"]
        lines += ["## Tuning", "", f"Development concepts {', '.join(tuning['dev'].values())}; the rule: the best mean "
                  f"of IRA and CRA among configurations with UA >= {tuning['ua_min']:.0%}, else the highest UA.", "",
                  "| kind | method | configuration | UA | IRA | CRA | time (s) | chosen |", "|---" * 8 + "|"]
        for kind, per_method in tuning["sweep"].items():
            for method, sweep in per_method.items():
                for row in sweep:
                    mark = "yes" if row["config"] == tuning["chosen"][kind][method]["config"] else ""
                    lines.append(f"| {kind} | {method} | {' '.join(row['flags']) or '(settings)'} | {row['ua']:.1%} | "
                                 f"{row['ira']:.1%} | {row['cra']:.1%} | {row['seconds']:.0f} | {mark} |")
        lines.append("")
    lines += ["## Mean over the test concepts", "", "Mean [min, max] over every test concept and seed.", "",
              *table(grouped(rows, methods, concepts)), "", "Best per column (leak: closest to RT's):", "",
              *best_per_column(rows, methods, concepts), "", ANCHORS, ""]
    pareto_plot([r for r in rows if r["concept"] in concepts], methods, directory / "benchmark-text-pareto.png")
    lines += ["![UA against IRA and CRA, every test run](benchmark-text-pareto.png)", ""]
    for concept in concepts:
        picture = f"benchmark-text-grid-{concept.replace(':', '-')}.png"
        drawn = grid_picture(rows, concept, methods, directory / picture)
        lines += [f"## {concept}", "", *table(grouped(rows, methods, [concept])), "",
                  *attack_table(rows, concept, methods)]
        lines += [f"![{concept}: base, RT and each method's seed-{results['seed']} samples]({picture})", ""] if drawn else []
    lines += ["## SFR-on against the targets", "", "FID is of the remaining prompts' samples against RT's (the style "
              "judge's features), so RT's own is 0: the target reads as at most 1.5x the base model's.", "",
              *targets(rows, concepts), ""]
    path = directory / "benchmark-text.md"
    path.write_text("\n".join(lines) + "\n")
    return path
