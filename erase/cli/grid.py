"""`erase grid`: one picture comparing models: rows = models (per seed), columns = conditions, same seeds."""

from __future__ import annotations

from pathlib import Path

from erase.cli.sample import CONDITION_RANGES

RANGES = {**CONDITION_RANGES, "cell": "[8, inf)"}  # erase/cli/options.py check_ranges


def register(commands) -> None:
    from erase.cli.sample import add_condition_arguments

    parser = commands.add_parser(
        "grid", help="compare models side by side in one labelled PNG",
        description="Samples every model on the same conditions and seeds and writes a labelled grid: one row per "
                    "(seed, model), models adjacent for each seed; one column per condition.",
    )
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                        help="a model to show, repeatable, e.g. --model base=models/base --model erased=models/no7")
    add_condition_arguments(parser)
    parser.add_argument("--seeds", default="0-3", help="seeds, one row per model and seed (default: %(default)s)")
    parser.add_argument("--cell", type=int, default=48, help="pixel size of one image cell (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output PNG file")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(run=run)


def parse_models(specs: list[str]) -> dict[str, str]:
    from erase.errors import UsageError

    models = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory:
            raise UsageError(f"--model {spec!r} must look like NAME=DIR, e.g. base=models/base")
        if name in models:
            raise UsageError(f"--model name {name!r} is used twice; give each model its own name")
        models[name] = directory
    return models


def run(args) -> None:
    import os
    import tempfile

    from erase.data import parse_class_ids
    from erase.errors import UsageError
    from erase.eval.grid import grid_rows, image_grid
    from erase.pipelines import load_adapter
    from erase.config import check_ranges
    from erase.cli.sample import build_jobs

    check_ranges(vars(args), RANGES)
    if args.out.suffix.lower() != ".png":
        raise UsageError(f"--out {str(args.out)!r} must end in .png")
    if args.out.exists() and not args.overwrite:
        raise UsageError(f"--out {str(args.out)!r} exists; choose another file or pass --overwrite")
    models = parse_models(args.model)
    seeds = parse_class_ids(args.seeds)
    adapters = {name: load_adapter(directory) for name, directory in models.items()}
    for adapter in adapters.values():  # every model must accept the conditions: fail before sampling anything
        columns = build_jobs(args, adapter, seeds[:1])
    first = next(iter(adapters.values()))
    rows = grid_rows(adapters, lambda seed: build_jobs(args, first, [seed]), seeds, args.steps, args.batch_size)
    labels = [str(job.record.get("class_name", job.condition))[:12] for job in columns]
    picture = image_grid(rows, labels, cell=args.cell)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(suffix=".png", dir=args.out.parent)
    os.close(handle)
    picture.save(staging)
    os.replace(staging, args.out)
    print(f"wrote {args.out} ({picture.width}x{picture.height}): {len(rows)} rows x {len(labels)} columns")
