"""`erase train-classifier`: train the digit classifier that classifier unlearning starts from, or the gold standard
retrained without a forget set (the same recipe, split and seed, minus the forget images)."""

from __future__ import annotations

import time

from erase.engine import Runtime
from erase.train import ClassifierTrainConfig
from erase.cli.common import add_data_argument, add_output_arguments, add_runtime_arguments
from erase.cli.options import add_dataclass_arguments, dataclass_from_args
from erase.config import check_ranges, field_ranges

# erase/config.py check_ranges: plain flags of this command (ClassifierTrainConfig and Runtime declare their own)
RANGES = {"resolution": "[8, inf)", "split_seed": "[0, 4294967295]", "test_per_class": "[1, inf)",
          "validation_per_class": "[1, inf)", "forget_random": "(0, 1)"}


def register(commands) -> None:
    parser = commands.add_parser(
        "train-classifier", help="train an image classifier to unlearn from (or one retrained without a forget set)",
        description="Train a small CNN classifier (erase/pipelines/classifier.py) on a seeded stratified split of a "
                    "dataset: per class, --test-per-class test images and --validation-per-class validation images "
                    "are held out and the rest trains. With --forget-class or --forget-random the forget set is left "
                    "out: the retrained gold standard that `erase unlearn` on the full model is compared with. "
                    "Writes the model folder (model_index.json, classifier/) and run.json with its accuracies.",
    )
    add_data_argument(parser)
    parser.add_argument("--resolution", type=int, default=16, help="image side in pixels (default: %(default)s)")
    split = parser.add_argument_group("split and forget set (recorded in the model; `erase unlearn` reuses them)")
    split.add_argument("--split-seed", type=int, default=0, help="seed of the split and of --forget-random's draw (default: %(default)s)")
    split.add_argument("--test-per-class", type=int, default=100, help="test images per class (default: %(default)s)")
    split.add_argument("--validation-per-class", type=int, default=50,
                       help="validation images per class, never trained on (Nabla-tau's tau) (default: %(default)s)")
    split.add_argument("--forget-class", default=None, help="train without these classes' images, e.g. '1' or '1,3'")
    split.add_argument("--forget-random", type=float, default=None,
                       help="train without this random share of the training split, e.g. 0.1")
    add_dataclass_arguments(parser.add_argument_group("training"), ClassifierTrainConfig)
    add_output_arguments(parser)
    add_runtime_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> None:
    import torch

    from erase.data import classifier_data, parse_class_ids
    from erase.checkpoint import find_state
    from erase.record import (atomic_output_dir, check_output_dir, checkpoint_folder, discard_checkpoints,
                              environment, write_json)
    from erase.train import train_classifier
    from erase.pipelines.classifier import ClassifierAdapter

    check_ranges(vars(args), RANGES)
    check_ranges({name: getattr(args, name) for name in ClassifierTrainConfig.__dataclass_fields__},
                 field_ranges(ClassifierTrainConfig))
    out = check_output_dir(args.out, args.overwrite)
    config, runtime = dataclass_from_args(ClassifierTrainConfig, args), dataclass_from_args(Runtime, args)
    checkpoints = checkpoint_folder(out, runtime, args.overwrite)
    resumed_from = str(find_state(runtime.resume)) if runtime.resume is not None else None
    data_spec = {"source": args.data, "resolution": args.resolution, "channels": 1, "split_seed": args.split_seed,
                 "test_per_class": args.test_per_class, "validation_per_class": args.validation_per_class}
    forget_classes = parse_class_ids(args.forget_class) if args.forget_class else None
    parts = classifier_data({"data": data_spec}, classes=forget_classes, fraction=args.forget_random)
    train_data = parts["remain"]  # the whole training split, or all of it but the forget set
    torch.manual_seed(runtime.seed)
    names = parts["test"].class_names
    adapter = ClassifierAdapter.create(args.resolution, 1, len(names), class_names=names, data=data_spec,
                                       trained_without={"classes": forget_classes, "random": args.forget_random})
    started = time.time()
    result = train_classifier(adapter, train_data, config, runtime)
    if not result["is_main_process"]:
        return
    scores = {name: adapter.accuracy(parts[name]) for name in ("forget", "remain", "test") if len(parts[name])}
    with atomic_output_dir(out, args.overwrite) as staging:
        adapter.save_pretrained(staging)
        write_json(staging / "run.json", {
            "command": "train-classifier", "config": config, "runtime": runtime, "data": data_spec,
            "trained_without": {"classes": forget_classes, "random": args.forget_random},
            "train_images": len(train_data), "accuracy": scores, "device": result["device"],
            "num_processes": result["num_processes"], "process_weight_digests": result["process_weight_digests"],
            "resumed_from": resumed_from, "steps": result["steps"], "timings": result["timings"],
            "losses": result["losses"], "started": started, "environment": environment(),
        })
    discard_checkpoints(checkpoints)
    shown = ", ".join(f"{name} {value:.2%}" for name, value in scores.items())
    print(f"trained on {len(train_data)} images in {result['timings']['train']:.1f} s; accuracy: {shown}; "
          f"saved to {out}")
