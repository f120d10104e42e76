"""`erase`: erase a class or concept from a diffusion model and prove it did.

Exit codes: 0 success, 2 bad usage or a fault that left nothing written (the message says which and how to fix it).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading

from erase import __version__

SUBCOMMANDS = ("train", "train-classifier", "guidance", "unlearn", "sample", "grid", "score", "demo", "benchmark", "benchmark-text", "benchmark-classifier", "mia", "attack", "ablation")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `erase` parser for the command line `argv`: `erase unlearn` gets the flags of the `--method` it names."""
    from erase.cli import (ablation, attack, benchmark, benchmark_classifier, benchmark_text, demo, grid, guidance, mia, sample, score,
                         train, train_classifier, unlearn)
    from erase.cli.options import OneLineParser, chosen_method

    parser = OneLineParser(
        prog="erase",
        description="Erase a class or concept from a trained diffusion model, or classes or training images from an "
                    "image classifier (SFR-on and baselines), offline.",
        epilog="Run 'erase COMMAND --help' for a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"erase {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for module in (train, train_classifier, guidance, unlearn, sample, grid, score, demo, benchmark, benchmark_text,
                   benchmark_classifier, mia,
                   attack, ablation):
        if module is unlearn:
            module.register(commands, chosen_method(argv or []))
        else:
            module.register(commands)
    return parser


def resume_command(argv: list[str], folder, num_processes: int) -> str:
    """`argv` with `--resume folder` in place of any earlier --resume, as a shell line."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    launcher = ["erase"] if num_processes == 1 else ["accelerate", "launch", "--multi_gpu", "--num_processes",
                                                       str(num_processes), "-m", "erase"]  # add your --num_machines etc.
    return shlex.join([*launcher, *kept, "--resume", str(folder)])


def _terminate(number, frame):
    raise KeyboardInterrupt  # SIGTERM outside a training loop: the same clean exit as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    from erase.engine import Interrupted
    from erase.errors import UsageError, command_line_spelling

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or argparse's one-line refusal (OneLineParser.error)
        return done.code if isinstance(done.code, int) else 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        with command_line_spelling():  # messages name options by their flags
            args.run(args)
    except UsageError as error:
        print(f"erase {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        if stop.is_main_process:
            print(f"erase {args.command}: stopped by {signal.Signals(stop.signal_number).name} after step {stop.step} "
                  f"of {stop.steps}; nothing was written to --out; saved a resumable state to {stop.folder}; "
                  f"continue with: {resume_command(argv, stop.folder, stop.num_processes)}", file=sys.stderr)
        return 128 + stop.signal_number
    except KeyboardInterrupt:
        print(f"erase {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
