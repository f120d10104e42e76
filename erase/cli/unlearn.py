"""`erase unlearn`: erase classes or prompts from a model folder with a chosen method; the input is never modified."""

from __future__ import annotations

import time
from pathlib import Path

from erase.engine import Runtime
from erase.methods import METHODS
from erase.cli.common import add_output_arguments, add_runtime_arguments
from erase.cli.options import (add_method_arguments, check_ranges, dataclass_from_args, field_ranges,
                             method_config_from_args)

# erase/cli/options.py check_ranges: plain flags of this command (method and runtime fields declare their own)
RANGES = {"forget_random": "(0, 1)", "images_per_condition": "[1, inf)", "generation_steps": "[1, inf)", "monitor_every": "[0, inf)",
          "monitor_samples": "[1, inf)", "monitor_steps": "[1, inf)"}


def register(commands) -> None:
    parser = commands.add_parser(
        "unlearn", help="erase classes (class models, classifiers), prompts (text-to-image models) or a share of "
                        "a classifier's training set",
        description="Erase classes or prompts from a diffusers model folder (CFG UNet, DDPM, DiT, Stable Diffusion) "
                    "with SFR-on, its joint variant, Nabla-tau, GA, RL, SalUn, ESD or SA; or classes or a random share "
                    "of the training set from a classifier written by `erase train-classifier` (every method but ESD "
                    "and SA). "
                    "Writes the erased model (a plain diffusers folder: only the trained component is new), "
                    "mask.safetensors (saliency mask, where the method has one) and run.json.",
    )
    parser.add_argument("--model", required=True, help="input diffusers model folder (read only)")
    what = parser.add_argument_group("what to erase (classes, or prompts for text-to-image models)")
    what.add_argument("--forget-class", help="class id(s) to erase, e.g. '7' or '1,3'")
    what.add_argument("--forget-random", type=float, default=None,
                      help="classifiers: forget this share of the training split, drawn with the model's split seed "
                           "(as `erase train-classifier --forget-random` leaves it out), e.g. 0.1")
    what.add_argument("--remain-classes", help="classes to keep (default: every other class of the data or model)")
    what.add_argument("--forget-prompt", action="append", default=[], help="a prompt to erase (repeatable)")
    what.add_argument("--forget-prompts", type=Path, help="CSV of prompts to erase (I2P layout), e.g. nsfw.csv")
    what.add_argument("--retain-prompt", action="append", default=[], help="a prompt to keep (repeatable)")
    what.add_argument("--retain-prompts", type=Path, help="CSV of prompts to keep, e.g. not-nsfw.csv")
    what.add_argument("--replacement-prompt", help="pseudo target of --forget-objective pseudo: eps(x_t, forget prompt) "
                                                   "is pulled toward the frozen eps(x_t, replacement prompt)")
    data = parser.add_argument_group("forget and remain images")
    data.add_argument("--data", default="auto",
                      help="'mnist', 'digits', a folder with one subfolder per class, a folder written by "
                           "`erase sample` (index.json), or 'generated' (sample the base model); 'auto' = mnist for "
                           "UNet class models, generated for DiT and Stable Diffusion (default: %(default)s)")
    data.add_argument("--images-per-condition", type=int, default=8,
                      help="with --data generated: images per class or prompt (default: %(default)s)")
    data.add_argument("--generation-steps", type=int, default=50,
                      help="with --data generated: DDIM steps per image (default: %(default)s)")
    data.add_argument("--data-cache", type=Path, default=None,
                      help="with --data generated: reuse or fill this folder (default: OUT/generated)")
    model = parser.add_argument_group("model options")
    model.add_argument("--train-params", default="full", choices=("full", "xattn", "noxattn"),
                       help="Stable Diffusion: which UNet parameters train (ESD conventions) (default: %(default)s)")
    model.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory (large models)")
    probe = parser.add_argument_group("monitoring (class models): forgetting accuracy during the run, untimed")
    probe.add_argument("--monitor-every", type=int, default=0,
                       help="every N steps, sample the forget classes and record FA in run.json (default: 0 = off)")
    probe.add_argument("--monitor-samples", type=int, default=40, help="forget-class samples per probe (default: %(default)s)")
    probe.add_argument("--monitor-steps", type=int, default=25, help="DDIM steps per probe sample (default: %(default)s)")
    probe.add_argument("--monitor-classifier", default="digits",
                       help="classifier judging the probe: 'digits' (shipped) or a folder (default: %(default)s)")
    parser.add_argument("--method", default="sfron", choices=sorted(METHODS), help="erasure method (default: %(default)s)")
    parser.add_argument("--preset", default="auto",
                        help="named settings under the flags you give: 'auto' = the model's backbone's (sfron/joint: "
                             "cfg_unet, dit, stable_diffusion; see erase/sfron.py SFRON_PRESETS), a backbone name, or "
                             "'none' for the method's plain defaults; run.json records it (default: %(default)s)")
    parser.add_argument("--mask", default=None, help="reuse a saliency mask (mask.safetensors of an earlier run): skips Fisher")
    add_method_arguments(parser, METHODS)
    add_output_arguments(parser)
    add_runtime_arguments(parser)
    parser.set_defaults(run=run)


def choose_preset(args, backbone: str) -> dict:
    """{"name", "values"} of --preset for --method (values {} where the method has none for that backbone)."""
    from erase.errors import UsageError
    from erase.methods import PRESETS

    presets = PRESETS.get(args.method, {})
    if args.preset == "none":
        return {"name": None, "values": {}}
    name = backbone if args.preset == "auto" else args.preset
    if args.preset != "auto" and name not in presets:
        raise UsageError(f"--preset {args.preset!r} does not exist for --method {args.method}; choose 'auto', 'none'"
                         f"{''.join(', ' + repr(n) for n in presets)}")
    return {"name": name if name in presets else None, "values": dict(presets.get(name, {}))}


def read_targets(args, adapter):
    """The forget and remain conditions the flags name, checked against what the model takes."""
    from erase.data import parse_class_ids
    from erase.errors import UsageError
    from erase.sources import Targets
    from erase.eval.prompts import PromptRow, read_prompts

    prompts_given = bool(args.forget_prompt or args.forget_prompts)
    if args.forget_random is not None:
        if adapter.generative:
            raise UsageError("--forget-random forgets a share of a classifier's training split; for this "
                             f"{adapter.backbone} model use --forget-class or --forget-prompt")
        if prompts_given or args.forget_class:
            raise UsageError("give one forget set: --forget-random or --forget-class, not both")
        return Targets([], None)
    if prompts_given == bool(args.forget_class):
        raise UsageError("name what to erase: --forget-class for class models, or --forget-prompt/--forget-prompts")
    if prompts_given:
        if not adapter.takes_prompts:
            raise UsageError(f"this {adapter.backbone} model takes class ids, not prompts; use --forget-class")
        forget = [PromptRow(p, None, None, str(i)) for i, p in enumerate(args.forget_prompt)]
        remain = [PromptRow(p, None, None, str(i)) for i, p in enumerate(args.retain_prompt)]
        forget += read_prompts(args.forget_prompts) if args.forget_prompts else []
        remain += read_prompts(args.retain_prompts) if args.retain_prompts else []
        if not remain:
            raise UsageError("give prompts to keep (--retain-prompt or --retain-prompts): the remain step needs them")
        return Targets(forget, remain)
    if adapter.takes_prompts:
        raise UsageError("this text-to-image model erases prompts; use --forget-prompt or --forget-prompts")
    forget = parse_class_ids(args.forget_class)
    if adapter.conditional:
        adapter.check_class_ids(forget)
    remain = parse_class_ids(args.remain_classes) if args.remain_classes else None
    return Targets(forget, remain)


def load_data(args, adapter, targets, staging_hint: Path):
    """(forget set, remain set, record of where they came from)."""
    from erase.data import load_dataset, split_by_class
    from erase.errors import UsageError
    from erase.sources import cached_or_generated, from_indexed_folder

    source = args.data
    if not adapter.generative:
        from erase.data import classifier_data

        if source != "auto":
            raise UsageError(f"--data {source!r}: a classifier unlearns the training split it recorded; leave --data out")
        if args.remain_classes:
            raise UsageError("--remain-classes does not apply to a classifier: it keeps every image it does not forget")
        parts = classifier_data(adapter.info, targets.forget or None, args.forget_random)
        targets.remain = sorted(set(parts["remain"].labels.tolist()))
        return parts["forget"], parts["remain"], {"source": "training split", **adapter.info["data"],
                                                  "forget_random": args.forget_random}
    if source == "auto":
        source = "generated" if adapter.backbone in ("dit", "stable_diffusion") else "mnist"
    if source == "generated":
        if targets.remain is None:
            if not adapter.conditional:
                raise UsageError("an unconditional model cannot generate per-class data; pass --data with real images")
            targets.remain = [c for c in range(adapter.num_classes) if c not in targets.forget]
        folder = args.data_cache or staging_hint
        forget, remain, reused = cached_or_generated(adapter, targets, folder, args.images_per_condition, args.seed,
                                                     args.generation_steps)
        return forget, remain, {"source": "generated", "folder": str(folder), "reused_cache": reused}
    if Path(source).is_dir() and (Path(source) / "index.json").is_file():
        if targets.remain is None:
            targets.remain = [c for c in range(adapter.num_classes) if c not in targets.forget]
        forget, remain = from_indexed_folder(adapter, source, targets)
        return forget, remain, {"source": str(source)}
    if targets.by_prompt:
        raise UsageError(f"--data {source!r}: prompt erasure needs 'generated' or a folder written by `erase sample --prompts`")
    channels, _, resolution = adapter.image_shape
    dataset = load_dataset(source, resolution, channels)
    held = adapter.info.get("held_out")
    if held and held["data"] == source:  # images the model never saw stay unseen (`erase mia` tests them)
        from erase.data import split_held_out

        dataset = split_held_out(dataset, held["per_class"], held["split_seed"])[0]
    forget, remain = split_by_class(dataset, targets.forget)
    if targets.remain is not None:
        import torch

        remain = remain.subset(torch.isin(remain.labels, torch.as_tensor(targets.remain)), "remain")
        if len(remain) == 0:
            raise UsageError(f"--remain-classes {args.remain_classes!r} has no images in {source}")
    return forget, remain, {"source": source, "held_out_excluded": bool(held and held["data"] == source)}


def make_monitor(args, adapter, targets):
    """The FA probe of --monitor-every, or None."""
    from erase.engine import Monitor
    from erase.errors import UsageError

    if args.monitor_every == 0:
        return None
    if targets.by_prompt or not adapter.conditional or not adapter.generative:
        raise UsageError("--monitor-every judges class samples with a classifier; it applies to class erasure only")
    from erase.eval.classifier import load_classifier
    from erase.eval.probe import forgetting_probe

    classifier = load_classifier(args.monitor_classifier)
    return Monitor(args.monitor_every, forgetting_probe(classifier, targets.forget, args.monitor_samples,
                                                        args.monitor_steps, args.seed))


def monitor_record(args, monitor) -> dict | None:
    from erase.eval.probe import first_step_below

    if monitor is None:
        return None
    return {"every": args.monitor_every, "samples": args.monitor_samples, "num_inference_steps": args.monitor_steps,
            "classifier": args.monitor_classifier, "history": monitor.history,
            "first_step_fa_below_5pct": first_step_below(monitor.history, 0.05)}


def run(args) -> None:
    import tempfile

    import torch

    from erase.errors import UsageError
    from erase.engine import find_state
    from erase.record import (atomic_output_dir, check_output_dir, checkpoint_folder, discard_checkpoints,
                              environment, write_json)
    from erase.saliency import load_mask, save_mask
    from erase.pipelines import load_adapter

    out = check_output_dir(args.out, args.overwrite, inputs=(args.model,))
    method, config_class = METHODS[args.method]
    check_ranges(vars(args), RANGES)  # plain flags, then the method's and runtime's given values, before the model loads
    check_ranges({name: getattr(args, name) for name in config_class.__dataclass_fields__ if hasattr(args, name)},
                 field_ranges(config_class))
    check_ranges({name: getattr(args, name) for name in Runtime.__dataclass_fields__}, field_ranges(Runtime))
    adapter = load_adapter(args.model)
    if not adapter.generative and args.method not in adapter.methods:
        raise UsageError(f"--method {args.method} does not apply to this {adapter.backbone} model (it needs a "
                         f"generative model); choose one of {', '.join(adapter.methods)}")
    preset = choose_preset(args, adapter.backbone)
    all_fields = {f for _, cls in METHODS.values() for f in cls.__dataclass_fields__}
    config = method_config_from_args(args.method, config_class, args, all_fields, preset["values"])
    runtime = dataclass_from_args(Runtime, args)
    checkpoints = checkpoint_folder(out, runtime, args.overwrite)
    resumed_from = str(find_state(runtime.resume)) if runtime.resume is not None else None
    if args.train_params != "full":
        if not hasattr(adapter, "select_trainable"):
            raise UsageError(f"--train-params {args.train_params} applies to Stable Diffusion; this is a {adapter.backbone} model")
        adapter.select_trainable(args.train_params)
    if args.gradient_checkpointing:
        adapter.denoiser.enable_gradient_checkpointing()
    targets = read_targets(args, adapter)
    if args.replacement_prompt is not None:
        if getattr(config, "forget_objective", "pseudo") != "pseudo":
            raise UsageError("--replacement-prompt is the target of --forget-objective pseudo; pass both")
        config.pseudo_class = int(adapter.register_prompts([args.replacement_prompt])[0])
    monitor = make_monitor(args, adapter, targets)
    mask = None
    if args.mask:
        try:
            mask = load_mask(args.mask)
        except Exception as error:  # safetensors raises several types for missing or damaged files
            raise UsageError(f"cannot read --mask {args.mask!r} ({error}); pass a mask.safetensors written by erase") from None
    elif resumed_from is not None and (Path(resumed_from) / "mask.safetensors").is_file():
        mask = load_mask(Path(resumed_from) / "mask.safetensors")  # the interrupted run's mask: no Fisher again

    with tempfile.TemporaryDirectory(prefix="erase-generated-") as scratch:
        forget, remain, data_record = load_data(args, adapter, targets, Path(scratch) / "generated")
        pseudo = getattr(config, "pseudo_class", None)
        if pseudo is not None and args.replacement_prompt is None and pseudo not in set(remain.labels.tolist()):
            raise UsageError(f"--pseudo-class {pseudo} is not a remaining class; pick one of {sorted(set(remain.labels.tolist()))}")
        started = time.time()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            result = method(adapter, forget, remain, config, runtime, mask=mask, monitor=monitor)
        except ValueError as error:  # a mask that does not fit this model
            raise UsageError(f"{error}; compute a new mask by leaving out --mask") from None
        if not result["is_main_process"]:
            return
        adapter.info["erased"] = {"method": args.method, "source": str(args.model),
                                  **({"forget_prompts": sorted(targets.condition_sets()[0])} if targets.by_prompt
                                     else {"forget_classes": list(targets.forget)})}
        with atomic_output_dir(out, args.overwrite) as staging:
            adapter.save_pretrained(staging)
            if result["mask"] is not None:
                save_mask(result["mask"], staging / "mask.safetensors", {"method": args.method})
            if data_record["source"] == "generated" and args.data_cache is None:
                import shutil

                shutil.copytree(Path(scratch) / "generated", staging / "generated")  # the run's D_f and D_r, for audit
                data_record["folder"] = str(out / "generated")
            write_json(staging / "run.json", {
                "command": "unlearn", "method": args.method, "model": args.model, "backbone": adapter.backbone,
                "forget": [getattr(t, "prompt", t) for t in targets.forget], "forget_random": args.forget_random,
                "remain": [getattr(t, "prompt", t) for t in targets.remain] if targets.remain is not None else "all others",
                "replacement_prompt": args.replacement_prompt, "train_params": adapter.info.get("train_params"),
                "prompt_ids": ({p: i for i, p in enumerate(adapter.class_names)} if adapter.takes_prompts else None),
                "data": data_record, "forget_images": len(forget), "remain_images": len(remain),
                "config": config, "preset": preset, "runtime": runtime, "mask_from": args.mask, "mask_sparsity": result["mask_sparsity"],
                "device": result["device"], "num_processes": result["num_processes"], "timings": result["timings"],
                "process_weight_digests": result["process_weight_digests"], "resumed_from": resumed_from,
                "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
                "gradient_checkpointing": args.gradient_checkpointing, "method_record": result.get("record"),
                "conventions": result["conventions"],
                "monitor": monitor_record(args, monitor),
                "losses": result["losses"], "started": started, "environment": environment(),
            })
        discard_checkpoints(checkpoints)
    parts = [f"{name} loss {log['value'][0]:.4f} -> {log['value'][-1]:.4f}"
             for name, log in result["losses"].items() if log["value"]]
    if result["mask_sparsity"] is not None:
        parts.append(f"mask keeps {1 - result['mask_sparsity']['overall']:.1%} of entries")
    print(f"{args.method}: {', '.join(parts)}; saved to {out}")
