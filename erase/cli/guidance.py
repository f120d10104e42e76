"""`erase guidance`: measure a class-conditional model's sample accuracy across guidance scales; store the best."""

from __future__ import annotations

from pathlib import Path

RANGES = {"per_class": "[1, inf)", "steps": "[1, inf)", "seed": "[0, 4294967295]"}  # erase/config.py check_ranges


def register(commands) -> None:
    parser = commands.add_parser(
        "guidance", help="choose a class model's guidance scale by classifier accuracy of its samples",
        description="Samples --per-class images of every class at each scale (same seeds for every scale), judges "
                    "them with the classifier and prints mean and per-class accuracy. With --write, the best scale "
                    "(highest mean accuracy) and the sweep are stored in the model's model_index.json (`_erase` "
                    "key), which every erase command then uses by default; nothing else in the folder changes.",
    )
    parser.add_argument("--model", required=True, help="class-conditional diffusers model folder")
    parser.add_argument("--scales", default="1,1.5,2,3",
                        help="comma-separated scales s of eps_null + s (eps_c - eps_null) (default: %(default)s)")
    parser.add_argument("--per-class", type=int, default=50, help="images per class and scale (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM sampling steps (default: %(default)s)")
    parser.add_argument("--classifier", default=None,
                        help="'digits' (shipped) or a classifier folder; 'styled' (the shipped style and digit judges) "
                             "for a text model of the styled digits, which samples every digit x style caption "
                             "(default: styled for such a model, else digits)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default: %(default)s)")
    parser.add_argument("--write", action="store_true", help="store the best scale in the model folder's model_index.json")
    parser.add_argument("--json", type=Path, default=None, help="also write the sweep to this JSON file")
    parser.set_defaults(run=run)


def run(args) -> None:
    from erase.errors import UsageError
    from erase.record import environment, write_json
    from erase.eval.classifier import load_classifier
    from erase.eval.guidance import guidance_sweep
    from erase.pipelines import load_adapter
    from erase.pipelines.base import write_erase_info
    from erase.config import check_ranges, in_interval

    check_ranges(vars(args), RANGES)
    try:
        scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        raise UsageError(f"--scales {args.scales!r} is not a comma-separated list of numbers, e.g. '1,1.5,2,3'") from None
    if not scales or not all(in_interval(s, "[0, inf)") for s in scales):
        raise UsageError(f"--scales {args.scales!r}: every guidance scale must be at least 0, e.g. '1,1.5,2,3'")
    adapter = load_adapter(args.model)
    styled = str(adapter.info.get("trained_on", "")).startswith("styled-digits")
    classifier = args.classifier or ("styled" if styled else "digits")
    if styled and classifier == "styled":
        return run_styled(args, adapter, scales)
    if not adapter.conditional or adapter.takes_prompts:
        raise UsageError(f"this {adapter.backbone} model is not class-conditional; the sweep draws every class "
                         "(text models of the styled digits: --classifier styled)")
    sweep = guidance_sweep(adapter, load_classifier(classifier), scales, args.per_class, args.seed, args.steps)
    sweep["classifier"] = str(classifier)
    print(f"{'scale':>6s} {'mean acc':>9s}  " + " ".join(f"{name:>5s}" for name in adapter.class_names))
    for row in sweep["rows"]:
        print(f"{row['scale']:6g} {row['accuracy_mean']:9.1%}  "
              + " ".join(f"{row['accuracy_per_class'][c]:5.0%}" for c in range(adapter.num_classes)))
    print(f"best: {sweep['best']:g} (stored scale: {adapter.info.get('guidance_scale')})")
    if args.json is not None:
        write_json(args.json, {"model": str(args.model), **sweep, "environment": environment()})
    if args.write:
        write_erase_info(args.model, {**adapter.info, "guidance_scale": sweep["best"], "guidance_sweep": sweep})
        print(f"stored guidance scale {sweep['best']:g} in {Path(args.model) / 'model_index.json'}")


def run_styled(args, adapter, scales) -> None:
    """The sweep of a text model of the styled digits: --per-class images of every caption form (digit x style x
    template), style and digit agreement with the prompt; the best mean is stored with --write."""
    from erase.eval.classifier import load_classifier
    from erase.eval.guidance import styled_guidance_sweep
    from erase.pipelines.base import write_erase_info
    from erase.record import environment, write_json

    sweep = styled_guidance_sweep(adapter, load_classifier("styles"), load_classifier("styled-digits"), scales,
                                  args.per_class, args.seed, args.steps)
    sweep["classifier"] = "styled"
    print(f"{'scale':>6s} {'style':>6s} {'digit':>6s}  worst style, worst digit")
    for row in sweep["rows"]:
        worst_style = min(row["style_accuracy"].items(), key=lambda kv: kv[1])
        worst_digit = min(row["digit_accuracy"].items(), key=lambda kv: kv[1])
        print(f"{row['scale']:6g} {row['style_agreement']:6.1%} {row['digit_agreement']:6.1%}  "
              f"{worst_style[0]} {worst_style[1]:.0%}, {worst_digit[0]} {worst_digit[1]:.0%}")
    print(f"best: {sweep['best']:g} (stored scale: {adapter.info.get('guidance_scale')})")
    if args.json is not None:
        write_json(args.json, {"model": str(args.model), **sweep, "environment": environment()})
    if args.write:
        write_erase_info(args.model, {**adapter.info, "guidance_scale": sweep["best"], "guidance_sweep": sweep})
        print(f"stored guidance scale {sweep['best']:g} in {Path(args.model) / 'model_index.json'}")
