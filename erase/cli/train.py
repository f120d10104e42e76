"""`erase train`: train a class-conditional CFG UNet on a dataset, optionally without some classes."""

from __future__ import annotations

import time

from erase.engine import Runtime
from erase.train import TrainConfig
from erase.cli.common import add_data_argument, add_output_arguments, add_runtime_arguments
from erase.cli.options import add_dataclass_arguments, dataclass_from_args


def register(commands) -> None:
    parser = commands.add_parser(
        "train", help="train a base model (or the retrained-without-class gold standard)",
        description="Train a class-conditional UNet2DModel with label dropout for classifier-free guidance; "
                    "saves a diffusers folder with model_index.json, unet/ and scheduler/ plus run.json.",
    )
    add_data_argument(parser)
    parser.add_argument("--resolution", type=int, default=16, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--channels", default="32,64", help="UNet block widths, comma-separated (default: %(default)s)")
    parser.add_argument("--attention", action="store_true", help="add self-attention at the lowest-resolution level")
    parser.add_argument("--layers-per-block", type=int, default=1, help="ResNet layers per UNet block (default: %(default)s)")
    parser.add_argument("--exclude-classes", default=None,
                        help="class ids left out of the training data, e.g. '7' or '1,3' (the model keeps all class ids)")
    parser.add_argument("--hold-out-per-class", type=int, default=0,
                        help="keep this many random images per class out of training (seeded by --split-seed), for "
                             "membership inference (`erase mia`); the model records which (default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of --hold-out-per-class's draw (default: %(default)s)")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="default guidance scale stored in the model, eps_null + s (eps_c - eps_null) (default: %(default)s)")
    add_dataclass_arguments(parser.add_argument_group("training"), TrainConfig)
    add_output_arguments(parser)
    add_runtime_arguments(parser)
    parser.set_defaults(run=run)


# erase/config.py check_ranges: plain flags of this command (TrainConfig and Runtime declare their own)
RANGES = {"resolution": "[8, inf)", "layers_per_block": "[1, inf)", "guidance_scale": "[0, inf)",
          "hold_out_per_class": "[0, inf)", "split_seed": "[0, 4294967295]"}


def run(args) -> None:
    import torch

    from erase.config import check_ranges

    check_ranges(vars(args), RANGES)

    from erase.data import load_dataset, parse_class_ids, split_by_class
    from erase.errors import UsageError
    from erase.engine import find_state
    from erase.record import (atomic_output_dir, check_output_dir, checkpoint_folder, discard_checkpoints,
                              environment, write_json)
    from erase.train import train
    from erase.pipelines.cfg_unet import CFGUNetAdapter

    out = check_output_dir(args.out, args.overwrite)
    config, runtime = dataclass_from_args(TrainConfig, args), dataclass_from_args(Runtime, args)
    checkpoints = checkpoint_folder(out, runtime, args.overwrite)
    resumed_from = str(find_state(runtime.resume)) if runtime.resume is not None else None
    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        raise UsageError(f"--channels {args.channels!r} is not a comma-separated list of widths, e.g. '32,64'") from None
    dataset = load_dataset(args.data, args.resolution)
    held_out = None
    if args.hold_out_per_class:
        from erase.data import split_held_out

        held_out = {"per_class": args.hold_out_per_class, "split_seed": args.split_seed, "data": args.data,
                    "resolution": args.resolution}
        dataset = split_held_out(dataset, args.hold_out_per_class, args.split_seed)[0]
    excluded = parse_class_ids(args.exclude_classes) if args.exclude_classes else []
    train_data = split_by_class(dataset, excluded)[1] if excluded else dataset
    torch.manual_seed(runtime.seed)
    adapter = CFGUNetAdapter.create(
        args.resolution, channels, dataset.images.shape[1], num_classes=len(dataset.class_names),
        attention=args.attention, layers_per_block=args.layers_per_block,
        class_names=dataset.class_names, guidance_scale=args.guidance_scale, excluded_classes=excluded,
        trained_on=dataset.name, **({"held_out": held_out} if held_out else {}),
    )
    started = time.time()
    result = train(adapter, train_data, config, runtime)
    if not result["is_main_process"]:
        return
    with atomic_output_dir(out, args.overwrite) as staging:
        adapter.save_pretrained(staging)
        write_json(staging / "run.json", {
            "command": "train", "config": config, "runtime": runtime, "data": args.data, "resolution": args.resolution,
            "channels": channels, "attention": args.attention,
            "layers_per_block": args.layers_per_block, "excluded_classes": excluded, "train_images": len(train_data),
            "held_out": held_out,
            "device": result["device"], "num_processes": result["num_processes"],
            "process_weight_digests": result["process_weight_digests"],
            "resumed_from": resumed_from,
            "timings": result["timings"], "losses": result["losses"], "started": started, "environment": environment(),
        })
    discard_checkpoints(checkpoints)
    print(f"trained {sum(p.numel() for p in adapter.denoiser.parameters()):,} parameters in "
          f"{result['timings']['train']:.1f} s; saved to {out}")
