"""`erase grid`: one picture comparing models: rows = models (per seed), columns = conditions, same seeds."""

from __future__ import annotations

from pathlib import Path

from erase.api import GRID_RANGES as RANGES  # noqa: F401 (tests read it); checked by erase.grid before any model loads


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
    from erase.errors import OptionError

    models = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory:
            raise OptionError(f"--model {spec!r} must look like NAME=DIR, e.g. base=models/base")
        if name in models:
            raise OptionError(f"--model name {name!r} is used twice; give each model its own name")
        models[name] = directory
    return models


def run(args) -> None:
    from erase.api import grid

    picture, record = grid(parse_models(args.model), args.classes, args.prompts, seeds=args.seeds, steps=args.steps,
                           guidance_scale=args.guidance_scale, batch_size=args.batch_size, limit=args.limit,
                           cell=args.cell, out=args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} ({picture.width}x{picture.height}): {record['rows']} rows x {len(record['columns'])} columns")
