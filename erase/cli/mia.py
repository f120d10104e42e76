"""`erase mia`: can an attacker still tell a class's training images from held-out ones? The loss-threshold
membership-inference attack on diffusion models, for several models (e.g. the base, RT and erased ones) at once."""

from __future__ import annotations

import math
from pathlib import Path

RANGES = {"seed": "[0, 4294967295]", "batch_size": "[1, inf)"}


def register(commands) -> None:
    parser = commands.add_parser(
        "mia", help="membership inference on diffusion models: forget-class training images vs held-out ones",
        description="For each model: the per-sample denoising loss at fixed noise and fixed timesteps (identical "
                    "draws for every model) of the forget class's training images (members) and of its held-out "
                    "images (non-members, which the base model recorded with `erase train --hold-out-per-class`); "
                    "a logistic regression on those losses tells them apart (balanced, 10-fold CV; 50%% = it cannot "
                    "tell, what a model retrained without the class scores). The other classes, pooled, are the "
                    "control: their membership should stay as the base model had it. Prints a table and writes JSON.",
    )
    parser.add_argument("--models", required=True,
                        help="comma-separated model folders, NAME=FOLDER or FOLDER, e.g. base=m/base,RT=m/rt,sfron=runs/s")
    parser.add_argument("--forget-class", required=True, help="the erased class id(s), e.g. '1'")
    parser.add_argument("--timesteps", default="100,300,500,700,900",
                        help="timesteps of the loss features (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and the attack's folds (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--report", type=Path, default=None, help="also write the table as markdown to this file")
    parser.set_defaults(run=run)


def membership_sets(info: dict, forget_classes) -> dict:
    """{"forget", "control"} -> (members, non-members) ImageDatasets from the data split `info["held_out"]` records."""
    import torch

    from erase.data import load_dataset, split_held_out
    from erase.errors import UsageError

    held = info.get("held_out")
    if not held:
        raise UsageError("the first model records no held-out images (_erase.held_out): train the base model with "
                         "`erase train --hold-out-per-class N` so membership can be tested")
    members, non_members = split_held_out(load_dataset(held["data"], held["resolution"]), held["per_class"],
                                          held["split_seed"])
    sets = {}
    for name, keep in (("forget", True), ("control", False)):
        def pick(data):
            return data.subset(torch.isin(data.labels, torch.as_tensor(list(forget_classes))) == keep, name)
        sets[name] = (pick(members), pick(non_members))
    return sets


def run(args) -> None:
    import time

    from erase.data import parse_class_ids
    from erase.errors import UsageError
    from erase.record import environment, write_json
    from erase.eval.mia import attack_accuracy, denoising_loss_features
    from erase.pipelines import load_adapter
    from erase.config import check_ranges

    check_ranges(vars(args), RANGES)
    try:
        timesteps = [int(t) for t in args.timesteps.split(",")]
    except ValueError:
        raise UsageError(f"--timesteps {args.timesteps!r}: write integers like 100,300,500") from None
    models = []
    for index, entry in enumerate(part.strip() for part in args.models.split(",") if part.strip()):
        name, _, folder = entry.rpartition("=")
        models.append((name or Path(folder).name or f"model{index}", Path(folder)))
    forget_classes = parse_class_ids(args.forget_class)
    started = time.time()
    first = load_adapter(models[0][1])
    sets = membership_sets(first.info, forget_classes)
    rows = {}
    for name, folder in models:
        adapter = first if folder == models[0][1] else load_adapter(folder)
        if adapter.info.get("held_out") not in (None, first.info["held_out"]):
            raise UsageError(f"{name}: {folder} holds out other images than {models[0][1]}; compare models trained "
                             "on one split")
        row = {"folder": str(folder)}
        for part, (members, non_members) in sets.items():
            scored = [denoising_loss_features(adapter, data.images, data.labels, timesteps, args.seed, args.batch_size)
                      for data in (members, non_members)]
            row[part] = {"attack_accuracy": attack_accuracy(*scored, seed=args.seed),
                         "member_loss": float(scored[0].mean()), "non_member_loss": float(scored[1].mean()),
                         "members": len(members), "non_members": len(non_members)}
        rows[name] = row
        print(f"{name}: attack accuracy {row['forget']['attack_accuracy']:.1%} on class {args.forget_class} "
              f"(loss {row['forget']['member_loss']:.4f} members, {row['forget']['non_member_loss']:.4f} held out), "
              f"{row['control']['attack_accuracy']:.1%} on the other classes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"command": "mia", "forget_classes": forget_classes, "timesteps": timesteps,
                          "seed": args.seed, "held_out": first.info["held_out"], "models": rows,
                          "seconds": time.time() - started, "environment": environment()})
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text("\n".join(report_lines(rows, args, first.info["held_out"], timesteps)) + "\n")
    print(f"wrote {args.out}" + (f" and {args.report}" if args.report is not None else ""))


def report_lines(rows: dict, args, held: dict, timesteps: list[int]) -> list[str]:
    import shlex
    import time

    lines = [
        f"# Membership inference on diffusion models: class {args.forget_class}",
        "",
        f"Written by `erase mia --models {shlex.quote(args.models)} --forget-class {args.forget_class} --timesteps "
        f"{args.timesteps} --seed {args.seed}` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"Members: the class's training images; non-members: its {held['per_class']} held-out images (`erase train "
        f"--hold-out-per-class {held['per_class']} --split-seed {held['split_seed']}`, data {held['data']} at "
        f"{held['resolution']} px), never seen by any model here. Feature: the per-sample denoising loss (pixel mean) "
        f"at timesteps {', '.join(map(str, timesteps))}, each at one fixed noise draw shared by every model. Attack: "
        "logistic regression on those losses, balanced, 10-fold CV; 50% = the attacker cannot tell. Control: the "
        "same attack on the other classes pooled (their membership should stay as the base model had it).",
        "",
        "| model | attack accuracy, forget class | loss members / held out | attack accuracy, other classes | "
        "loss members / held out |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        forget, control = row["forget"], row["control"]
        lines.append(f"| {name} | {forget['attack_accuracy']:.1%} | {forget['member_loss']:.4f} / "
                     f"{forget['non_member_loss']:.4f} | {control['attack_accuracy']:.1%} | "
                     f"{control['member_loss']:.4f} / {control['non_member_loss']:.4f} |")
    first = next(iter(rows.values()))
    pairs = {part: min(first[part]["members"], first[part]["non_members"]) for part in ("forget", "control")}
    lines += ["", f"Sets: {first['forget']['members']} members and {first['forget']['non_members']} held-out images "
                  f"of the forget class (the attack balances them to {pairs['forget']} each); "
                  f"{first['control']['members']} and {first['control']['non_members']} of the other classes. An "
                  f"attacker with nothing to go on scores 50% give or take {50 / math.sqrt(2 * pairs['forget']):.1f} "
                  f"points (one binomial standard error) on the forget class, "
                  f"{50 / math.sqrt(2 * pairs['control']):.1f} on the other classes."]
    return lines
