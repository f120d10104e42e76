"""Time one iteration of every method against one plain fine-tuning step on the same model and batch size.

    python scripts/time_step.py [--resolution 16] [--channels 32,64] [--batch-size 64] [--steps 20] [--repeats 3]

Runs the real loops (`erase.train.train` and each method in `erase.methods.METHODS`) and reports the median
seconds per step of the unlearning phase (one-off phases such as Fisher, masks or replay generation excluded;
masked methods get a precomputed half-zero mask), plus SFR-on with an all-ones mask to isolate the masking cost.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from erase.data import mnist, split_by_class
from erase.engine import Runtime
from erase.errors import UsageError
from erase.methods import METHODS
from erase.saliency import trainable_parameters
from erase.train import TrainConfig, train
from erase.pipelines.cfg_unet import CFGUNetAdapter
from erase.config import check_ranges


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=16, help="image side (default: %(default)s)")
    parser.add_argument("--channels", default="32,64", help="UNet block widths (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch per step, forget and remain each (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the median is reported (default: %(default)s)")
    parser.add_argument("--methods", default=",".join(METHODS), help="methods to time (default: all)")
    args = parser.parse_args(argv)
    try:
        check_ranges(vars(args), {"resolution": "[8, inf)", "batch_size": "[1, inf)", "steps": "[1, inf)", "repeats": "[1, inf)"})
    except UsageError as error:
        parser.error(str(error))

    data = mnist(args.resolution)
    forget, remain = split_by_class(data, [7])
    torch.manual_seed(0)
    base = CFGUNetAdapter.create(args.resolution, tuple(int(c) for c in args.channels.split(",")), 1, num_classes=10)
    params = trainable_parameters(base.denoiser)
    half = {n: torch.rand_like(p) < 0.5 for n, p in params.items()}
    ones = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    runtime = Runtime(seed=0, log_every=10)
    common = {"steps": args.steps, "batch_size": args.batch_size}
    variants = {"plain fine-tuning": None, "sfron, all-ones mask": ("sfron", ones)}
    variants.update({name: (name, half) for name in args.methods.split(",")})
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, variant in variants.items():
            adapter = copy.deepcopy(base)
            if variant is None:
                result = train(adapter, remain, TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-4), runtime)
                seconds[name].append(result["timings"]["train"] / args.steps)
                continue
            method, mask = variant
            function, config_class = METHODS[method]
            result = function(adapter, forget, remain, config_class(**common), runtime, mask=mask)
            seconds[name].append(result["timings"]["unlearn"] / args.steps)
    plain = statistics.median(seconds["plain fine-tuning"])
    print(f"\nmodel {sum(p.numel() for p in params.values()):,} parameters, {args.resolution}px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} x {args.steps} steps")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:24s} {median * 1000:8.1f} ms/step   x{median / plain:.2f} of plain")
    if "sfron" in seconds:
        ratio = statistics.median(seconds["sfron"]) / statistics.median(seconds["sfron, all-ones mask"])
        print(f"masking overhead: {100 * (ratio - 1):+.1f}% of an SFR-on iteration (half-zero vs all-ones mask)")


if __name__ == "__main__":
    main()
