"""`erase`: erase a class or concept from a diffusion model and prove it did.

Exit codes: 0 success, 2 bad usage or a fault that left nothing written (the message says which and how to fix it).
"""

from __future__ import annotations

import argparse
import sys

from erase import __version__

SUBCOMMANDS = ("train", "guidance", "unlearn", "sample", "grid", "score", "demo", "benchmark", "ablation")


def build_parser() -> argparse.ArgumentParser:
    from scripts import ablation, benchmark, demo, grid, guidance, sample, score, train, unlearn

    parser = argparse.ArgumentParser(
        prog="erase",
        description="Erase a class or concept from a trained diffusion model (SFR-on and baselines), offline.",
        epilog="Run 'erase COMMAND --help' for a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"erase {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (train, guidance, unlearn, sample, grid, score, demo, benchmark, ablation):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from erase.errors import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except UsageError as error:
        print(f"erase {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"erase {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
