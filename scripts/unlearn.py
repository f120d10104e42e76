"""`erase unlearn`: erase classes from a model folder with a chosen method; the input folder is never modified."""

from __future__ import annotations

import time

from erase.engine import Runtime
from erase.methods import METHODS
from scripts.common import add_data_argument, add_output_arguments, add_runtime_arguments
from scripts.options import add_dataclass_arguments, dataclass_from_args


def register(commands) -> None:
    parser = commands.add_parser(
        "unlearn", help="erase one or more classes from a model",
        description="Erase classes from a diffusers model folder. Writes the erased model (plain diffusers folder), "
                    "mask.safetensors (saliency mask, where the method has one) and run.json.",
    )
    parser.add_argument("--model", required=True, help="input diffusers model folder (read only)")
    parser.add_argument("--forget-class", required=True, help="class id(s) to erase, e.g. '7' or '1,3'")
    parser.add_argument("--method", default="sfron", choices=sorted(METHODS), help="erasure method (default: %(default)s)")
    add_data_argument(parser)
    parser.add_argument("--mask", default=None, help="reuse a saliency mask (mask.safetensors of an earlier run): skips Fisher")
    for name, (_, config_class) in METHODS.items():
        add_dataclass_arguments(parser.add_argument_group(f"{name} options"), config_class)
    add_output_arguments(parser)
    add_runtime_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> None:
    from erase.data import load_dataset, parse_class_ids, split_by_class
    from erase.errors import UsageError
    from erase.record import atomic_output_dir, check_output_dir, environment, write_json
    from erase.saliency import load_mask, save_mask
    from pipelines import load_adapter

    out = check_output_dir(args.out, args.overwrite, inputs=(args.model,))
    method, config_class = METHODS[args.method]
    config, runtime = dataclass_from_args(config_class, args), dataclass_from_args(Runtime, args)
    adapter = load_adapter(args.model)
    forget_classes = parse_class_ids(args.forget_class)
    if adapter.conditional:
        unknown = [c for c in forget_classes if not 0 <= c < adapter.num_classes]
        if unknown:
            raise UsageError(f"class ids {unknown} do not exist; this model has classes 0-{adapter.num_classes - 1}")
    channels, _, resolution = adapter.image_shape
    forget, remain = split_by_class(load_dataset(args.data, resolution, channels), forget_classes)
    pseudo = getattr(config, "pseudo_class", None)
    if pseudo is not None and pseudo not in set(remain.labels.tolist()):
        raise UsageError(f"--pseudo-class {pseudo} is not a remaining class; pick one of {sorted(set(remain.labels.tolist()))}")
    mask = None
    if args.mask:
        try:
            mask = load_mask(args.mask)
        except Exception as error:  # safetensors raises several types for missing or damaged files
            raise UsageError(f"cannot read --mask {args.mask!r} ({error}); pass a mask.safetensors written by erase") from None
    started = time.time()
    try:
        result = method(adapter, forget, remain, config, runtime, mask=mask)
    except ValueError as error:  # a mask that does not fit this model
        raise UsageError(f"{error}; compute a new mask by leaving out --mask") from None
    if not result["is_main_process"]:
        return
    adapter.info["erased"] = {"method": args.method, "forget_classes": forget_classes, "source": str(args.model)}
    with atomic_output_dir(out, args.overwrite) as staging:
        adapter.save_pretrained(staging)
        save_mask(result["mask"], staging / "mask.safetensors", {"gamma": str(getattr(config, "gamma", ""))})
        write_json(staging / "run.json", {
            "command": "unlearn", "method": args.method, "model": args.model, "forget_classes": forget_classes,
            "data": args.data, "forget_images": len(forget), "remain_images": len(remain),
            "config": config, "runtime": runtime, "mask_from": args.mask, "mask_sparsity": result["mask_sparsity"],
            "device": result["device"], "num_processes": result["num_processes"], "timings": result["timings"],
            "losses": result["losses"], "started": started, "environment": environment(),
        })
    losses = result["losses"]
    print(f"{args.method}: forget loss {losses['forget']['value'][0]:.4f} -> {losses['forget']['value'][-1]:.4f}, "
          f"remain loss {losses['remain']['value'][0]:.4f} -> {losses['remain']['value'][-1]:.4f}; "
          f"mask keeps {1 - result['mask_sparsity']['overall']:.1%} of entries; saved to {out}")
