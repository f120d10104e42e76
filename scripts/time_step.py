"""Time one SFR-on iteration against one plain fine-tuning step on the same model and batch size.

    python -m scripts.time_step [--resolution 16] [--channels 32,64] [--batch-size 64] [--steps 30] [--repeats 3]

Runs the real loops (`erase.train.train` and `erase.sfron.sfron`) and reports median seconds per step:
plain fine-tuning, SFR-on with an all-ones mask (no masking work) and SFR-on with a half-zero mask.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from erase.data import mnist, split_by_class
from erase.engine import Runtime
from erase.saliency import trainable_parameters
from erase.sfron import SFRonConfig, sfron
from erase.train import TrainConfig, train
from pipelines.cfg_unet import CFGUNetAdapter


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=16, help="image side (default: %(default)s)")
    parser.add_argument("--channels", default="32,64", help="UNet block widths (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch per step, forget and remain each (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="steps per timed run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the median is reported (default: %(default)s)")
    args = parser.parse_args(argv)

    data = mnist(args.resolution)
    forget, remain = split_by_class(data, [7])
    channels = tuple(int(c) for c in args.channels.split(","))
    torch.manual_seed(0)
    adapter = CFGUNetAdapter.create(args.resolution, channels, 1, num_classes=10)
    params = trainable_parameters(adapter.denoiser)
    masks = {
        "sfron, all-ones mask": {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()},
        "sfron, half-zero mask": {n: torch.rand_like(p) < 0.5 for n, p in params.items()},
    }
    runtime = Runtime(seed=0, log_every=10)
    config = SFRonConfig(steps=args.steps, batch_size=args.batch_size)
    seconds: dict[str, list[float]] = {"plain fine-tuning": [], **{name: [] for name in masks}}
    for _ in range(args.repeats):
        result = train(adapter, remain, TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-4), runtime)
        seconds["plain fine-tuning"].append(result["timings"]["train"] / args.steps)
        for name, mask in masks.items():
            result = sfron(adapter, forget, remain, config, runtime, mask=mask)
            seconds[name].append(result["timings"]["unlearn"] / args.steps)
    plain = statistics.median(seconds["plain fine-tuning"])
    print(f"\nmodel {sum(p.numel() for p in params.values()):,} parameters, {args.resolution}px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} x {args.steps} steps")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:24s} {median * 1000:8.1f} ms/step   x{median / plain:.2f} of plain")
    all_ones, half_zero = (statistics.median(seconds[n]) for n in masks)
    print(f"masking overhead: {100 * (half_zero / all_ones - 1):+.1f}% of an SFR-on iteration")


if __name__ == "__main__":
    main()
