"""The Python API: `erase.unlearn`, `erase.sample`, `erase.grid`, `erase.score`.

The `erase` command's unlearn, sample, grid and score subcommands parse their flags and call these functions, so a
run's record is the same dict from either side: `erase unlearn`'s run.json is `json.dumps` of what `erase.unlearn`
returns, `erase sample`'s index.json of what `erase.sample` returns, `erase score`'s JSON of what `erase.score`
returns. A model is a folder path or an in-memory diffusers object (erase/models.py); bad input raises a
subclass of `erase.errors.UsageError` (the command prints it and exits 2), never `SystemExit`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from erase.config import as_list, class_ids
from erase.errors import OptionError, option

# Allowed values of the plain (non-config) options, refused before any model loads (erase/config.py check_ranges).
UNLEARN_RANGES = {"forget_random": "(0, 1)", "images_per_condition": "[1, inf)", "generation_steps": "[1, inf)",
                  "monitor_every": "[0, inf)", "monitor_samples": "[1, inf)", "monitor_steps": "[1, inf)"}
CONDITION_RANGES = {"limit": "[1, inf)", "steps": "[1, inf)", "guidance_scale": "[0, inf)", "batch_size": "[1, inf)"}
SAMPLE_RANGES = {**CONDITION_RANGES, "n_per_condition": "[1, inf)", "seed": "[0, 4294967295]"}
GRID_RANGES = {**CONDITION_RANGES, "cell": "[8, inf)"}
SCORE_RANGES = {"threshold": "[0, 1]"}
DEFAULT_CACHE = Path.home() / ".cache" / "erase"  # real-image FID statistics


# --------------------------------------------------------------------------------------------------------------
# unlearn


def choose_preset(method: str, preset: str | None, backbone: str | Sequence[str]) -> dict:
    """{"name", "values"} of `preset` for `method` (values {} where the method has none for that backbone); with
    "auto" and several names for the model (its own preset first, then its backbone's), the first the method has."""
    from erase.methods import PRESETS

    presets = PRESETS.get(method, {})
    if preset in (None, "none"):
        return {"name": None, "values": {}}
    names = [backbone] if isinstance(backbone, str) else list(backbone)
    name = next((n for n in names if n in presets), names[0]) if preset == "auto" else preset
    if preset != "auto" and name not in presets:
        raise OptionError(f"{option('--preset')} {preset!r} does not exist for {option('--method')} {method}; choose "
                          f"'auto', 'none'{''.join(', ' + repr(n) for n in presets)}")
    return {"name": name if name in presets else None, "values": dict(presets.get(name, {}))}


def split_options(method: str, options: dict) -> tuple[dict, dict]:
    """(method config values, runtime values) of flat keyword options; another method's option, or an unknown
    one, is an OptionError naming it."""
    from erase.config import unknown_option
    from erase.engine import Runtime
    from erase.methods import METHODS, option_names

    own = set(option_names(method))
    runtime_fields = set(Runtime.__dataclass_fields__)
    every = {f for _, cls in METHODS.values() for f in cls.__dataclass_fields__}
    foreign = sorted(name for name in options if name in every - own - runtime_fields)
    if foreign:
        names = ", ".join(option("--" + n.replace("_", "-")) for n in foreign)
        raise OptionError(f"{names} {'is not an option' if len(foreign) == 1 else 'are not options'} of "
                          f"{option('--method', 'method')} {method}; see 'erase unlearn --help' or "
                          f"help(erase.methods.{METHODS[method][1].__name__}) for which options each method takes")
    unknown = sorted(set(options) - every - runtime_fields)
    if unknown:
        raise unknown_option(unknown[0], own | runtime_fields, f"erase.unlearn (method {method})")
    return ({k: v for k, v in options.items() if k in own}, {k: v for k, v in options.items() if k in runtime_fields})


def read_targets(adapter, forget, remain, forget_random):
    """The forget and remain conditions, checked against what the model takes: class ids (ints, or strings like
    '1,3' for class models), prompts (strings) or prompt CSV files (paths) for text-to-image models."""
    from erase.prompts import PromptRow, read_prompts
    from erase.sources import Targets

    forget_items, remain_items = as_list(forget), as_list(remain)
    if forget_random is not None:
        if adapter.generative:
            raise OptionError(f"{option('--forget-random')} forgets a share of a classifier's training split; for this "
                              f"{adapter.backbone} model use {option('--forget-class', 'forget=[class ids]')} or "
                              f"{option('--forget-prompt', 'forget=[prompts]')}")
        if forget_items:
            raise OptionError(f"give one forget set: {option('--forget-random')} or "
                              f"{option('--forget-class', 'forget')}, not both")
        return Targets([], None)
    prompt_like = [x for x in forget_items if isinstance(x, (os.PathLike, PromptRow)) or
                   (isinstance(x, str) and adapter.takes_prompts)]
    if not forget_items or 0 < len(prompt_like) < len(forget_items):  # nothing, or class ids and prompts together
        raise OptionError(f"name what to erase: {option('--forget-class', 'forget=[class ids]')} for class models, "
                          f"or {option('--forget-prompt/--forget-prompts', 'forget=[prompts or prompt CSV paths]')}")
    if prompt_like:
        if not adapter.takes_prompts:
            raise OptionError(f"this {adapter.backbone} model takes class ids, not prompts; use "
                              f"{option('--forget-class', 'forget=[class ids]')}")

        def rows(items):  # strings first, then CSV files: the command line's order
            out = []
            for item in sorted(items, key=lambda x: isinstance(x, os.PathLike)):
                if isinstance(item, os.PathLike):
                    out += read_prompts(item)
                elif isinstance(item, PromptRow):
                    out.append(item)
                elif isinstance(item, str):
                    out.append(PromptRow(item, None, None, str(len(out))))
                else:
                    raise OptionError(f"{item!r} is not a prompt; pass strings or prompt CSV paths")
            return out

        remain_rows = rows(remain_items)
        if not remain_rows:
            raise OptionError(f"give prompts to keep ({option('--remain-prompt or --remain-prompts', 'remain=[prompts]')}): "
                              "the remain step needs them")
        return Targets(rows(forget_items), remain_rows)
    if adapter.takes_prompts:
        raise OptionError("this text-to-image model erases prompts; use "
                          f"{option('--forget-prompt or --forget-prompts', 'forget=[prompts]')}")
    forget_ids = class_ids(forget_items, option("--forget-class", "forget"))
    if adapter.conditional:
        adapter.check_class_ids(forget_ids)
    remain_ids = class_ids(remain_items, option("--remain-classes", "remain")) if remain_items else None
    erased_before = (adapter.info.get("erased") or {}).get("forget_classes", [])
    if remain_ids is None and erased_before and adapter.generative and adapter.conditional:
        # sequential erasure: classes an earlier run erased are not kept, or the remain step would teach them again
        remain_ids = [c for c in range(adapter.num_classes) if c not in forget_ids and c not in erased_before]
    return Targets(forget_ids, remain_ids)


def load_data(adapter, targets, *, data, forget_random, remain_given: bool, data_cache, images_per_condition: int,
              generation_steps: int, seed: int, staging_hint: Path):
    """(forget set, remain set, record of where they came from)."""
    from erase.data import load_dataset, split_by_class
    from erase.errors import DataError
    from erase.sources import cached_or_generated, from_indexed_folder

    source = str(data)
    if not adapter.generative:
        from erase.data import classifier_data

        if source != "auto":
            raise OptionError(f"{option('--data')} {source!r}: a classifier unlearns the training split it recorded; "
                              f"leave {option('--data')} out")
        if remain_given:
            raise OptionError(f"{option('--remain-classes', 'remain')} does not apply to a classifier: it keeps every "
                              "image it does not forget")
        parts = classifier_data(adapter.info, targets.forget or None, forget_random)
        targets.remain = sorted(set(parts["remain"].labels.tolist()))
        return parts["forget"], parts["remain"], {"source": "training split", **adapter.info["data"],
                                                  "forget_random": forget_random}
    if source == "auto":  # a model trained on captioned data erases with its real images
        trained_on = str(adapter.info.get("trained_on", ""))
        source = "styled-digits" if trained_on.startswith("styled-digits") else adapter.default_data
    if source == "generated":
        if targets.remain is None:
            if not adapter.conditional:
                raise DataError("an unconditional model cannot generate per-class data; pass "
                                f"{option('--data')} with real images")
            targets.remain = [c for c in range(adapter.num_classes) if c not in targets.forget]
        folder = Path(data_cache) if data_cache is not None else staging_hint
        forget, remain, reused = cached_or_generated(adapter, targets, folder, images_per_condition, seed,
                                                     generation_steps)
        return forget, remain, {"source": "generated", "folder": str(folder), "reused_cache": reused}
    if Path(source).is_dir() and (Path(source) / "index.json").is_file():
        if targets.remain is None:
            targets.remain = [c for c in range(adapter.num_classes) if c not in targets.forget]
        forget, remain = from_indexed_folder(adapter, source, targets)
        return forget, remain, {"source": str(source)}
    if targets.by_prompt and source != "styled-digits":
        raise DataError(f"{option('--data')} {source!r}: prompt erasure needs 'generated', captioned data "
                        "('styled-digits') or a folder written by `erase sample --prompts`")
    channels, _, resolution = adapter.image_shape
    dataset = load_dataset(source, resolution, channels)
    if targets.by_prompt:
        from erase.sources import from_captioned_dataset

        forget, remain = from_captioned_dataset(adapter, dataset, targets)
        return forget, remain, {"source": source, "images": {"forget": len(forget), "remain": len(remain)}}
    held = adapter.info.get("held_out")
    if held and held["data"] == source:  # images the model never saw stay unseen (`erase mia` tests them)
        from erase.data import split_held_out

        dataset = split_held_out(dataset, held["per_class"], held["split_seed"])[0]
    forget, remain = split_by_class(dataset, targets.forget)
    if targets.remain is not None:
        import torch

        remain = remain.subset(torch.isin(remain.labels, torch.as_tensor(targets.remain)), "remain")
        if len(remain) == 0:
            raise DataError(f"{option('--remain-classes', 'remain')} {targets.remain} has no images in {source}")
    return forget, remain, {"source": source, "held_out_excluded": bool(held and held["data"] == source)}


def make_monitor(adapter, targets, every: int, samples: int, steps: int, classifier: str, seed: int):
    """The forgetting-accuracy probe of `monitor_every`, or None."""
    from erase.engine import Monitor

    if every == 0:
        return None
    if targets.by_prompt or not adapter.conditional or not adapter.generative:
        raise OptionError(f"{option('--monitor-every')} judges class samples with a classifier; it applies to class "
                          "erasure only")
    from erase.eval.classifier import load_classifier
    from erase.eval.probe import forgetting_probe

    return Monitor(every, forgetting_probe(load_classifier(classifier), targets.forget, samples, steps, seed))


def unlearn(
    model,
    forget=None,
    remain=None,
    method: str = "sfron",
    *,
    model_config: str | os.PathLike | None = None,
    forget_random: float | None = None,
    replacement_prompt: str | None = None,
    data: str | os.PathLike = "auto",
    images_per_condition: int = 8,
    generation_steps: int = 50,
    data_cache: str | os.PathLike | None = None,
    preset: str | None = "auto",
    mask: str | os.PathLike | None = None,
    train_params: str = "full",
    gradient_checkpointing: bool | None = None,
    monitor_every: int = 0,
    monitor_samples: int = 40,
    monitor_steps: int = 25,
    monitor_classifier: str = "digits",
    config=None,
    runtime=None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    inplace: bool = False,
    **options,
) -> tuple[Any, dict]:
    """Erase `forget` from `model` with `method`; returns (erased model, record).

    model: a diffusers folder (never modified) or an in-memory `DDPMPipeline`, `(UNet2DModel, scheduler)` pair,
        `DiTPipeline`, `StableDiffusionPipeline`, `StableDiffusionXLPipeline`, `StableDiffusion3Pipeline` or
        `FluxPipeline` (erase/pipelines: each trained toward its own prediction type). The erased model comes back as the same kind of object (for a
        folder: the pipeline `DiffusionPipeline.from_pretrained` gives for it), ready to sample or save_pretrained.
        An object's denoiser is copied first unless `inplace=True`; frozen parts (VAE, text encoder) are shared.
        Or a single-file checkpoint (`.safetensors`, original CompVis / A1111 layout; never modified) with
        `model_config` = a local diffusers folder of its family (configs, tokenizer; erase/pipelines/single_file.py):
        it comes back as a pipeline of that folder's class. Pickle checkpoints (.ckpt, .pt, .bin) are refused.
    forget / remain: class ids (`7`, `[1, 3]`, `"0-4"`) for class models; prompts (strings) or prompt CSV files
        (`pathlib.Path`) for text-to-image models. `remain` defaults to every other class (less the classes an
        earlier run erased from this model: sequential erasure keeps them erased); prompts need it.
        (`retain=` is the deprecated name of `remain=`.)
    method: one of erase.methods.METHODS ("sfron", "joint", "nabla_tau", "ga", "rl", "salun", "esd", "sa").
    **options: the method's config fields (`lr=1e-5`, `steps=100`; see help(erase.methods.SFRonConfig)) and runtime
        fields (`seed`, `mixed_precision`, `cpu`, ...; erase.engine.Runtime), the flags of `erase unlearn`.
        `config=` / `runtime=` pass whole config objects instead (keyword options still override their fields;
        with `config`, no preset applies).
        `preset`: named settings under the options ("auto" = the backbone's; "none" = plain defaults).
    gradient_checkpointing: None (default) = on for denoisers of 300M parameters or more, off below; True / False
        force it.
    out: also write the folder `erase unlearn --out` writes (model, mask.safetensors, run.json).
    The record is the run.json dict: method, config, preset, runtime, data, losses, timings, device, environment.
    """
    import tempfile

    from erase.checkpoint import find_state
    from erase.config import check_ranges
    from erase.models import to_diffusers
    from erase.record import check_output_dir, checkpoint_folder, discard_checkpoints

    remain, train_params = deprecated_names(method, remain, train_params, options)
    check_method_name(method, mask, runtime, options)
    folder_input = isinstance(model, (str, os.PathLike))
    if out is not None:
        inputs = ((model,) if folder_input else ()) + ((model_config,) if model_config is not None else ())
        out = check_output_dir(out, overwrite, inputs=inputs)
    check_ranges(locals(), UNLEARN_RANGES)
    run_fn, config_class, method_values, runtime = check_request(method, config, runtime, options)
    opened = open_trainable(model, method, copy_weights=not inplace and not folder_input, model_config=model_config)
    adapter = opened.adapter
    config, chosen = method_config(method, config_class, config, method_values, preset, adapter)
    checkpoints = checkpoint_folder(out, runtime, overwrite)
    resumed_from = str(find_state(runtime.resume)) if runtime.resume is not None else None
    gradient_checkpointing = select_trainable(adapter, train_params, gradient_checkpointing)
    targets = read_targets(adapter, forget, remain, forget_random)
    if replacement_prompt is not None:
        config = with_replacement_prompt(config, adapter, replacement_prompt)
    monitor = make_monitor(adapter, targets, monitor_every, monitor_samples, monitor_steps, monitor_classifier,
                           runtime.seed)
    saliency = read_mask(mask, resumed_from)
    with tempfile.TemporaryDirectory(prefix="erase-generated-") as scratch:
        forget_set, remain_set, data_record, data_phase = load_run_data(
            adapter, targets, runtime, data=data, forget_random=forget_random, remain_given=bool(as_list(remain)),
            data_cache=data_cache, images_per_condition=images_per_condition, generation_steps=generation_steps,
            staging_hint=Path(scratch) / "generated")
        check_pseudo_class(config, replacement_prompt, remain_set)
        started = time.time()
        result = run_method(run_fn, adapter, forget_set, remain_set, config, runtime, saliency, monitor)
        adapter.info["erased"] = erasure_sequence(adapter.info.get("erased"), {
            "method": method, "source": opened.description,
            **({"forget_prompts": sorted(targets.condition_sets()[0])} if targets.by_prompt
               else {"forget_classes": list(targets.forget)})})
        if data_record["source"] == "generated" and data_cache is None:
            data_record["folder"] = str(out / "generated") if out is not None else None  # kept only with out
        record = unlearn_record(
            method, opened, adapter, targets, result, started=started, forget_random=forget_random,
            replacement_prompt=replacement_prompt, data_record=data_record, sizes=(len(forget_set), len(remain_set)),
            config=config, preset=chosen, runtime=runtime, mask=mask, resumed_from=resumed_from,
            data_phase=data_phase, gradient_checkpointing=gradient_checkpointing,
            monitor=monitor_record(monitor, monitor_samples, monitor_steps, monitor_classifier))
        if out is not None and result["is_main_process"]:
            write_unlearn_output(out, overwrite, adapter, result["mask"], method, record,
                                 Path(scratch) / "generated" if data_record.get("folder") else None)
        if checkpoints is not None and result["is_main_process"]:
            discard_checkpoints(checkpoints)
    return to_diffusers(opened), record


def deprecated_names(method: str, remain, train_params: str, options: dict):
    """(remain, train_params) with their deprecated spellings in `options` (removed from it) taken in, each with a
    DeprecationWarning: `retain` (the name before "remain" was chosen for the kept set everywhere) and ESD's
    `train_method` (what `train_params` chooses for every method)."""
    import warnings

    if "retain" in options:
        warnings.warn("erase.unlearn(retain=...) is deprecated; pass remain=... (the same set)", DeprecationWarning,
                      stacklevel=3)
        if remain is not None:
            raise OptionError("pass remain=... alone: retain= is its deprecated name")
        remain = options.pop("retain")
    if "train_method" in options:
        train_params = esd_train_params(method, options.pop("train_method"), train_params)
    return remain, train_params


def esd_train_params(method: str, train_method: str, train_params: str) -> str:
    """`train_params` for ESD's deprecated `train_method` (esd-x, esd-u, full), with a deprecation warning."""
    import warnings

    from erase.methods.esd import ESD_TRAIN_PARAMS

    if method != "esd" or train_method not in ESD_TRAIN_PARAMS:
        raise OptionError(f"train_method is ESD's deprecated name for train_params ({', '.join(ESD_TRAIN_PARAMS)}); "
                          "pass train_params='full', 'xattn' or 'noxattn'")
    chosen = ESD_TRAIN_PARAMS[train_method]
    if train_params not in ("full", chosen):
        raise OptionError(f"train_method={train_method!r} and train_params={train_params!r} disagree; pass "
                          "train_params alone")
    warnings.warn(f"erase.unlearn(train_method={train_method!r}) is deprecated; pass train_params={chosen!r} (the "
                  "same parameters)", DeprecationWarning, stacklevel=4)
    return chosen


def check_method_name(method: str, mask, runtime, options: dict) -> None:
    """The method exists, takes `mask` if one is given, and can run sharded if asked to."""
    from erase.methods import MASK_OPTIONS, MASKED, METHODS

    if method not in METHODS:
        raise OptionError(f"{option('--method', 'method')} {method!r} is not one of {', '.join(sorted(METHODS))}")
    if mask is not None and method not in MASKED:
        raise OptionError(f"{option('--mask')} confines the update of {', '.join(MASKED)}; {method} updates every trained "
                          f"weight and would ignore it: leave out {option('--mask')}")
    making = [name for name in MASK_OPTIONS.get(method, ()) if name in options]
    if mask is not None and making:
        raise OptionError(f"{option('--' + making[0].replace('_', '-'))} makes {method}'s own mask, which "
                          f"{option('--mask')} replaces, so it would be ignored: leave out one of the two")
    if options.get("fully_shard") or (runtime is not None and runtime.fully_shard) or \
            os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        from erase.sharding import check_method

        check_method(method)


def check_request(method: str, config, runtime, options: dict):
    """The request's method-level values, checked before any model loads: (method function, config class, the
    method's given option values, the Runtime)."""
    from erase.config import build_config, check_ranges, field_ranges
    from erase.engine import Runtime
    from erase.methods import METHODS

    run_fn, config_class = METHODS[method]
    method_values, runtime_values = split_options(method, options)
    check_ranges(method_values, field_ranges(config_class))  # the given values, before the model loads
    if config is not None and not isinstance(config, config_class):
        raise OptionError(f"config is a {type(config).__name__}; method {method} takes a {config_class.__name__}")
    runtime = build_config(Runtime, {**(dataclasses.asdict(runtime) if runtime is not None else {}), **runtime_values})
    return run_fn, config_class, method_values, runtime


def open_trainable(model, method: str, **kwargs):
    """`open_model`, refusing weights erase cannot train (not float32) and a method the model cannot take."""
    import torch

    from erase.errors import ModelError
    from erase.models import open_model

    opened = open_model(model, **kwargs)
    adapter = opened.adapter
    dtype = next(adapter.denoiser.parameters()).dtype
    if dtype != torch.float32:
        bf16 = option("--mixed-precision bf16", "mixed_precision='bf16'")
        raise ModelError(f"the model's {type(adapter.denoiser).__name__} holds {dtype} weights; erase trains float32 "
                         f"weights (use {bf16} for speed): load it with torch_dtype=torch.float32")
    if not adapter.generative and method not in adapter.methods:
        raise OptionError(f"{option('--method', 'method')} {method} does not apply to this {adapter.backbone} model "
                          f"(it needs a generative model); choose one of {', '.join(adapter.methods)}")
    return opened


def method_config(method: str, config_class, config, method_values: dict, preset, adapter):
    """(the method's config: given values over the preset over `config` or the defaults, the preset record). A
    given value the config would ignore (an option acting only under another's value) is an OptionError."""
    from erase.config import build_config, check_options_act

    chosen = (choose_preset(method, preset, [n for n in (adapter.preset, adapter.backbone) if n]) if config is None
              else {"name": None, "values": {}})
    base = dataclasses.asdict(config) if config is not None else {}
    built = build_config(config_class, {**base, **method_values}, chosen["values"])
    check_options_act(built, {*method_values, *base})
    if hasattr(built, "refuse_conflicts"):  # combinations refused before any data is made (SFR-on's pseudo anchor)
        built.refuse_conflicts(adapter)
    return built, chosen


def select_trainable(adapter, train_params: str, gradient_checkpointing: bool | None) -> bool:
    """Apply `--train-params` to the adapter's denoiser; returns whether gradient checkpointing is on."""
    if train_params != "full":
        if not hasattr(adapter, "select_trainable"):
            raise OptionError(f"{option('--train-params')} {train_params} applies to text-to-image models (Stable "
                              f"Diffusion, SDXL, SD 3, Flux); this is a {adapter.backbone} model")
        adapter.select_trainable(train_params)
    return use_gradient_checkpointing(adapter.denoiser, gradient_checkpointing)


def with_replacement_prompt(config, adapter, replacement_prompt: str):
    """A copy of `config` whose pseudo class is `replacement_prompt` (registered with the adapter)."""
    if getattr(config, "forget_objective", "pseudo") != "pseudo":
        pseudo_objective = option("--forget-objective pseudo", "forget_objective='pseudo'")
        raise OptionError(f"{option('--replacement-prompt')} is the target of {pseudo_objective}; pass both")
    return dataclasses.replace(config, pseudo_class=int(adapter.register_prompts([replacement_prompt])[0]))


def read_mask(mask, resumed_from: str | None) -> dict | None:
    """The saliency mask the run starts from: `mask`, else an interrupted run's (no Fisher again), else None."""
    from erase.saliency import load_mask

    if mask is not None:
        try:
            return load_mask(mask)
        except Exception as error:  # safetensors raises several types for missing or damaged files
            raise OptionError(f"cannot read {option('--mask')} {str(mask)!r} ({error}); pass a mask.safetensors "
                              "written by erase") from None
    if resumed_from is not None and (Path(resumed_from) / "mask.safetensors").is_file():
        return load_mask(Path(resumed_from) / "mask.safetensors")
    return None


def load_run_data(adapter, targets, runtime, **kwargs):
    """`load_data` with its peak memory measured: (forget set, remain set, data record, {"data": peak})."""
    import torch

    from erase.memory import PhaseMemory

    memory = PhaseMemory("cuda" if torch.cuda.is_available() and not runtime.cpu else "cpu")
    memory.start()
    forget_set, remain_set, record = load_data(adapter, targets, seed=runtime.seed, **kwargs)
    memory.stop("data")
    return forget_set, remain_set, record, memory.peaks


def check_pseudo_class(config, replacement_prompt, remain_set) -> None:
    pseudo = getattr(config, "pseudo_class", None)
    if pseudo is not None and replacement_prompt is None and pseudo not in set(remain_set.labels.tolist()):
        raise OptionError(f"{option('--pseudo-class')} {pseudo} is not a remaining class; pick one of "
                          f"{sorted(set(remain_set.labels.tolist()))}")


def run_method(run_fn, adapter, forget_set, remain_set, config, runtime, saliency, monitor) -> dict:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        return run_fn(adapter, forget_set, remain_set, config, runtime, mask=saliency, monitor=monitor)
    except ValueError as error:  # a mask that does not fit this model
        raise OptionError(f"{error}; compute a new mask by leaving out {option('--mask')}") from None


def unlearn_record(method, opened, adapter, targets, result, *, started, forget_random, replacement_prompt,
                   data_record, sizes, config, preset, runtime, mask, resumed_from, data_phase, gradient_checkpointing,
                   monitor) -> dict:
    """The run.json dict of one erasure run."""
    import torch

    from erase.record import as_json, environment

    return as_json({
        "command": "unlearn", "method": method, "model": opened.description, "backbone": adapter.backbone,
        "training_target": adapter.training_record() if adapter.generative else None,
        "forget": [getattr(t, "prompt", t) for t in targets.forget], "forget_random": forget_random,
        "erasure_sequence": adapter.info["erased"]["sequence"],
        "remain": [getattr(t, "prompt", t) for t in targets.remain] if targets.remain is not None else "all others",
        "replacement_prompt": replacement_prompt, "train_params": adapter.info.get("train_params"),
        "train_params_rule": adapter.info.get("train_params_rule"),
        "prompt_ids": ({p: i for i, p in enumerate(adapter.class_names)} if adapter.takes_prompts else None),
        "data": data_record, "forget_images": sizes[0], "remain_images": sizes[1],
        "config": config, "preset": preset, "runtime": runtime, "mask_from": None if mask is None else str(mask),
        "mask_sparsity": result["mask_sparsity"], "device": result["device"],
        "num_processes": result["num_processes"], "timings": result["timings"],
        "process_weight_digests": result["process_weight_digests"], "resumed_from": resumed_from,
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "memory": {**result["memory"], "phases": {**data_phase, **result["memory"]["phases"]}},
        "gradient_checkpointing": gradient_checkpointing, "method_record": result.get("record"),
        "conventions": result["conventions"], "monitor": monitor,
        "losses": result["losses"], "started": started, "environment": environment(),
    })


def write_unlearn_output(out: Path, overwrite: bool, adapter, mask, method: str, record: dict,
                         generated: Path | None) -> None:
    """The `--out` folder, written whole or not at all: the model, its mask, the generated data, run.json."""
    import shutil

    from erase.record import atomic_output_dir, write_json
    from erase.saliency import save_mask

    with atomic_output_dir(out, overwrite) as staging:
        adapter.save_pretrained(staging)
        if mask is not None:
            save_mask(mask, staging / "mask.safetensors", {"method": method})
        if generated is not None:
            shutil.copytree(generated, staging / "generated")  # the run's D_f and D_r
        write_json(staging / "run.json", record)


def erasure_sequence(previous: dict | None, step: dict) -> dict:
    """The `_erase.erased` facts after `step` on a model that `previous` describes (None: never erased): what this run
    erased (method, source) and, for `erase score` and `erase attack` to default to, everything erased so far, with
    the chain of runs in order under "sequence" (sequential erasure: A, then B from the result, then C)."""
    earlier = [] if previous is None else previous.get("sequence") or [
        {k: v for k, v in previous.items() if k != "sequence"}]  # a folder written before sequences were recorded
    sequence = [*earlier, step]
    facts = {**step, "sequence": sequence}
    for key in ("forget_classes", "forget_prompts"):
        if any(key in s for s in sequence):
            facts[key] = sorted({item for s in sequence for item in s.get(key, [])})
    return facts


CHECKPOINTING_FROM = 300_000_000  # denoiser parameters from which gradient checkpointing is on by default


def use_gradient_checkpointing(denoiser, requested: bool | None) -> bool:
    """Turn on gradient checkpointing where asked, or under None (the default) for every denoiser of at least
    CHECKPOINTING_FROM parameters (SD 1.x / 2.x: 0.86B, SDXL, SD 3, Flux, DiT-XL/2: 0.68B; no test or digit model):
    at 512 px its activations would outgrow the weights. Returns whether it is on."""
    supported = getattr(denoiser, "_supports_gradient_checkpointing", False)
    if requested is None:
        requested = supported and sum(p.numel() for p in denoiser.parameters()) >= CHECKPOINTING_FROM
    if requested:
        if not supported:
            raise OptionError(f"{option('--gradient-checkpointing', 'gradient_checkpointing=True')}: this "
                              f"{type(denoiser).__name__} does not support it; leave it off")
        denoiser.enable_gradient_checkpointing()
    return bool(requested)


def monitor_record(monitor, samples: int, steps: int, classifier: str) -> dict | None:
    from erase.eval.probe import first_step_below

    if monitor is None:
        return None
    return {"every": monitor.every, "samples": samples, "num_inference_steps": steps, "classifier": classifier,
            "history": monitor.history, "first_step_fa_below_5pct": first_step_below(monitor.history, 0.05)}


# --------------------------------------------------------------------------------------------------------------
# sample, grid


def build_jobs(adapter, classes, prompts, seeds: Sequence[int], guidance_scale: float | None, limit: int | None):
    """One job per (condition, seed): `classes` (ids, or strings like '0-9') or `prompts` (strings, PromptRows or
    prompt CSV paths), checked against what the model takes; on an unconditional model, one per seed and neither."""
    from erase.sampling import class_jobs, prompt_jobs
    from erase.prompts import PromptRow, read_prompts

    if not adapter.conditional:
        if classes is not None or prompts is not None:
            raise OptionError(f"this {adapter.backbone} model is unconditional: it has no classes or prompts; leave out "
                              f"{option('--classes', 'classes')} and {option('--prompts', 'prompts')} to draw "
                              f"{option('--n-per-condition', 'n_per_condition')} images")
        from erase.sampling import Job

        return [Job(None, s, None, {"condition": None, "seed": s}) for s in seeds]
    if (classes is None) == (prompts is None):
        raise OptionError(f"choose what to draw: {option('--classes', 'classes')} or {option('--prompts', 'prompts')}"
                          ", one of them")
    if prompts is not None:
        if getattr(adapter, "takes_prompts", False) is False:
            raise OptionError(f"this {adapter.backbone} model takes class ids, not prompts; use "
                              f"{option('--classes', 'classes')}")
        rows = []
        for item in as_list(prompts):
            if isinstance(item, os.PathLike):
                rows += read_prompts(item, limit)
            else:
                rows.append(item if isinstance(item, PromptRow) else PromptRow(str(item), None, None, str(len(rows))))
        return prompt_jobs(rows[:limit] if limit else rows, len(seeds), seeds[0], guidance_scale)
    ids = class_ids(as_list(classes), option("--classes", "classes"))
    adapter.check_class_ids(ids)
    return class_jobs(ids, seeds, adapter.class_names, guidance_scale)


def sample(
    model,
    classes=None,
    prompts=None,
    *,
    model_config: str | os.PathLike | None = None,
    n_per_condition: int = 10,
    seed: int = 0,
    steps: int = 50,
    guidance_scale: float | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
):
    """Draw `n_per_condition` images per class or prompt (an unconditional model: `n_per_condition` images, no
    classes or prompts); returns (images, record).

    images: floats in [0, 1], (N, C, H, W), condition-major. Image k of a condition uses seed `seed + k` (prompts:
    their CSV evaluation_seed + seed + k), so any image can be redrawn alone. The model's sampler (DDIM, eta 0, for
    DDPM-family schedules; flow-matching Euler for SD 3 / Flux), `steps` steps; guidance
    `guidance_scale` in eps_null + s (eps_c - eps_null) (None: the model's stored scale).
    record: what `erase sample` writes as index.json (model, sampler, and each image's file, condition and seed).
    model_config: with a single-file .safetensors checkpoint as `model`, the local diffusers folder of its family
        (as in erase.unlearn).
    out: also write that folder (images/*.png and index.json).
    """
    from erase.config import check_ranges
    from erase.sampling import generate
    from erase.images import write_images
    from erase.models import open_model
    from erase.record import as_json, atomic_output_dir, check_output_dir, environment

    check_ranges(locals(), SAMPLE_RANGES)
    if out is not None:
        inputs = ((model,) if isinstance(model, (str, os.PathLike)) else ()) + ((model_config,) if model_config else ())
        out = check_output_dir(out, overwrite, inputs=inputs)
    opened = open_model(model, train_params=None, model_config=model_config)
    adapter = opened.adapter
    jobs = build_jobs(adapter, classes, prompts, list(range(seed, seed + n_per_condition)), guidance_scale, limit)
    started = time.perf_counter()
    images = generate(adapter, jobs, steps, batch_size)
    seconds = time.perf_counter() - started
    records = [{"file": f"images/{i:06d}.png", **job.record,
                "guidance_scale": job.guidance_scale if job.guidance_scale is not None else adapter.info.get("guidance_scale")}
               for i, job in enumerate(jobs)]
    header = {"model": opened.description, "model_info": adapter.info,
              "sampler": adapter.training_record()["sampler"],
              "num_inference_steps": steps, "n_per_condition": n_per_condition, "seed": seed,
              "sampling_seconds": seconds, "environment": environment()}
    record = as_json({**header, "images": records})
    if out is not None:
        with atomic_output_dir(out, overwrite) as staging:
            write_images(staging, images, record["images"], {k: v for k, v in record.items() if k != "images"})
    return images, record


def grid(
    models: Mapping[str, Any],
    classes=None,
    prompts=None,
    *,
    seeds: Sequence[int] | str = (0, 1, 2, 3),
    steps: int = 50,
    guidance_scale: float | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    cell: int = 48,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
):
    """Sample every model on the same conditions and seeds; returns (PIL image, record).

    models: {row label: model (folder or diffusers object)}. The picture has one row per (seed, model), the models
    adjacent for each seed, and one column per condition. out: also write it as a PNG.
    """
    from erase.config import check_ranges
    from erase.eval.grid import grid_rows, image_grid
    from erase.models import open_model
    from erase.record import as_json, check_output_file

    check_ranges(locals(), GRID_RANGES)
    if out is not None:
        if Path(out).suffix.lower() != ".png":
            raise OptionError(f"{option('--out', 'out')} {str(out)!r} must end in .png")
        out = check_output_file(out, overwrite)
    if not models:
        raise OptionError(f"give at least one model to show ({option('--model NAME=DIR', 'models={name: model}')})")
    seed_list = class_ids(as_list(seeds) if not isinstance(seeds, str) else [seeds], option("--seeds", "seeds"))
    opened = {name: open_model(model, train_params=None) for name, model in models.items()}
    adapters = {name: o.adapter for name, o in opened.items()}
    for adapter in adapters.values():  # every model must accept the conditions: fail before sampling anything
        columns = build_jobs(adapter, classes, prompts, seed_list[:1], guidance_scale, limit)
    first = next(iter(adapters.values()))
    rows = grid_rows(adapters, lambda s: build_jobs(first, classes, prompts, [s], guidance_scale, limit), seed_list,
                     steps, batch_size)
    labels = [str(job.record.get("class_name", job.condition))[:12] for job in columns]
    picture = image_grid(rows, labels, cell=cell)
    if out is not None:
        import tempfile

        out.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(suffix=".png", dir=out.parent)
        os.close(handle)
        picture.save(staging)
        os.replace(staging, out)
    record = as_json({"models": {name: o.description for name, o in opened.items()}, "seeds": seed_list,
                        "columns": [job.record for job in columns], "rows": len(rows), "num_inference_steps": steps,
                        "size": [picture.width, picture.height], "out": None if out is None else str(out)})
    return picture, record


# --------------------------------------------------------------------------------------------------------------
# score


def score(
    images,
    record: dict | None = None,
    *,
    classifier: str | None = None,
    forget=None,
    forget_concept: str | None = None,
    fid_ref: str | None = None,
    fid_features: str = "classifier",
    fid_classes: str = "remain",
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
    nudenet: bool = False,
    threshold: float = 0.6,
    clip_model: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Score generated images; returns the scores dict `erase score` writes.

    images: a folder (written by `erase sample` / `erase.sample(out=...)`, or any folder of PNG/JPEG) or a tensor
        (N, C, H, W) in [0, 1] with `record` = `erase.sample`'s record (each image's condition; tensors are rounded
        to 8 bits first, as the PNGs are, so both give the same numbers).
    classifier: forgetting accuracy (FA, on `forget` classes; default: what the model's record says it erased) and
        remaining accuracy (RA) with 'digits' (shipped), a classifier folder or a transformers image classifier;
        'styled' (the shipped style and styled-digit judges, on images drawn from erase.styled.CAPTIONS) gives
        UnlearnCanvas' UA, IRA, CRA, kept and leak (erase/eval/concepts.py) for `forget_concept` ('style:KEY' or
        'digit:D'; default: the concept the model's record's forget prompts name).
    fid_ref: FID against 'mnist', 'digits' or a folder of real images, in `fid_features` space ('classifier' or
        'inception', which needs clean-fid, installed without torchvision: erase/eval/fid.py); over the remaining
        classes (`fid_classes`='remain') or all.
    nudenet: NudeNet EXPOSED detections at `threshold`. out: also write the scores as JSON.
    clip_model: CLIP score of each image against its prompt (index.json 'condition', as `erase sample --prompts`
        writes it) with the CLIPModel + CLIPProcessor in this local folder (nothing is downloaded): the mean
        overall, per prompt, and for the forget prompts against the rest when the model's record names them.
    """
    from erase.config import check_ranges
    from erase.record import as_json, check_output_file, environment, write_json

    check_ranges(locals(), SCORE_RANGES)
    if fid_features not in ("classifier", "inception"):
        raise OptionError(f"{option('--fid-features')} {fid_features!r} is not one of 'classifier', 'inception'")
    if fid_classes not in ("remain", "all"):
        raise OptionError(f"{option('--fid-classes')} {fid_classes!r} is not one of 'remain', 'all'")
    if out is not None:
        out = check_output_file(out, overwrite)
    if not (classifier or fid_ref or nudenet or clip_model):
        raise OptionError(f"nothing to score: pass {option('--classifier', 'classifier')}, "
                          f"{option('--fid-ref', 'fid_ref')}, {option('--clip-model', 'clip_model')} "
                          f"and/or {option('--nudenet', 'nudenet=True')}")
    clip = None
    if clip_model is not None:
        from erase.eval.clip_score import load_clip

        clip = load_clip(clip_model)  # a bad folder is refused before any image is read
    folder, pixels, records, header = scored_images(images, record)
    conditions = [r.get("condition") for r in records]
    where = str(folder) if folder is not None else "in-memory tensor"
    if clip is not None:  # refused before the other metrics load their networks
        from erase.eval.metrics import check_conditions

        check_conditions(conditions, str, repr(where) if folder is not None else "the record")
    erased = (header.get("model_info") or {}).get("erased", {})
    forget_classes = (class_ids(as_list(forget), option("--forget-class", "forget")) if forget is not None
                      else erased.get("forget_classes", []))
    if forget_concept is not None and classifier != "styled":
        styled = option("--classifier styled", "classifier='styled'")
        raise OptionError(f"{option('--forget-concept', 'forget_concept')} is scored by the styled judges: add {styled}")
    metrics = score_metrics(folder, pixels.shape[1:], where, forget_classes, erased, classifier=classifier,
                            forget_concept=forget_concept, fid_ref=fid_ref, fid_features=fid_features, fid_classes=fid_classes, cache_dir=cache_dir,
                            nudenet=nudenet, threshold=threshold, clip=clip, clip_model=clip_model)
    scores: dict = {"images": where, "image_count": len(pixels), "resolution": list(pixels.shape[1:]),
                    "forget_classes": forget_classes,
                    "sampling": {k: v for k, v in header.items() if k != "environment"}}
    results, timings = computed_metrics(metrics, pixels, conditions, [r["file"] for r in records])
    scores.update(results)
    if nudenet:
        scores["nudity"]["images_per_second"] = len(records) / timings["nudenet"]
    scores = as_json({**scores, "timings": timings, "environment": environment()})
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, scores)
    return scores


def score_metrics(folder, shape, where: str, forget_classes: list, erased: dict, *, classifier, forget_concept=None,
                  fid_ref, fid_features, fid_classes, cache_dir, nudenet, threshold, clip, clip_model) -> dict:
    """The metric objects (erase/eval/metrics.py) `erase.score`'s arguments ask for, by section name."""
    judge = None
    metrics = {}
    if classifier == "styled":
        from erase.eval.classifier import load_classifier
        from erase.eval.concepts import ConceptAccuracy
        from erase.styled import concept_of_prompts, parse_concept

        forget_prompts = erased.get("forget_prompts", [])
        concept = (parse_concept(forget_concept) if forget_concept is not None
                   else concept_of_prompts(forget_prompts))
        judge = load_classifier("styled-digits")  # FID in the digit judge's features
        metrics["concepts"] = ConceptAccuracy(load_classifier("styles"), judge, concept, forget_prompts)
    elif classifier or (fid_ref and fid_features == "classifier"):
        from erase.eval.classifier import load_classifier

        judge = load_classifier(classifier or "digits")
    if classifier and classifier != "styled":
        from erase.eval.metrics import ClassAccuracy

        metrics["classifier"] = ClassAccuracy(judge, str(classifier), forget_classes, where)
    if fid_ref:
        metrics["fid"] = fid_metric(shape, forget_classes, judge, fid_ref, fid_features, fid_classes,
                                    cache_dir)
    if nudenet:
        from erase.eval.metrics import NudityRate

        metrics["nudity"] = NudityRate(folder, threshold)
    if clip is not None:
        from erase.eval.metrics import PromptCLIPScore

        metrics["clip"] = PromptCLIPScore(clip, str(clip_model), erased.get("forget_prompts", []),
                                          repr(where) if folder is not None else "the record")
    return metrics


def computed_metrics(metrics: dict, pixels, conditions: list, files: list, batch_size: int = 500):
    """Every metric updated batch by batch over the images, then computed: ({name: section}, {name: seconds})."""
    timings = {name: 0.0 for name in metrics}
    for start in range(0, len(pixels), batch_size):
        end = start + batch_size
        for name, metric in metrics.items():
            started = time.perf_counter()
            metric.update(pixels[start:end], conditions[start:end], files[start:end])
            timings[name] += time.perf_counter() - started
    results = {}
    for name, metric in metrics.items():
        started = time.perf_counter()
        results[name] = metric.compute()
        timings[name] += time.perf_counter() - started
    return results, {"nudenet" if name == "nudity" else name: seconds for name, seconds in timings.items()}


def scored_images(images, record: dict | None):
    """(folder or None, uint8 (N, C, H, W) pixels, one record per image, the sampling header) of what
    `erase.score` was given: a folder, or a tensor in [0, 1] with `erase.sample`'s record (rounded to 8 bits, as
    the PNGs are)."""
    import torch

    from erase.errors import DataError
    from erase.images import INDEX, read_image_folder, to_unit_float

    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        pixels, records = read_image_folder(folder)
        header = json.loads((folder / INDEX).read_text()) if (folder / INDEX).is_file() else {}
    elif isinstance(images, torch.Tensor) and images.dim() == 4:
        folder = None
        pixels = (to_unit_float(images.detach().cpu()) * 255).round().to(torch.uint8)
        header = dict(record or {})
        records = header.get("images") or [{"file": f"images/{i:06d}.png"} for i in range(len(pixels))]
        if len(records) != len(pixels):
            raise DataError(f"record describes {len(records)} images, the tensor holds {len(pixels)}; pass the record "
                            "that erase.sample returned with these images")
    else:
        raise DataError(f"images must be a folder or an (N, C, H, W) tensor, not {type(images).__name__}")
    return folder, pixels, records, {k: v for k, v in header.items() if k != "images"}


def fid_metric(shape, forget_classes: list, judge, fid_ref, fid_features: str, fid_classes: str, cache_dir):
    """FID of the images (the remaining classes' only, with `fid_classes` 'remain') against `fid_ref`: a folder, or
    a dataset whose real statistics are cached under `cache_dir`. shape: the scored images' (C, H, W)."""
    import torch

    from erase.data import load_dataset
    from erase.eval.fid import ClassifierFeatures, InceptionFeatures, module_digest, real_statistics_path
    from erase.images import read_image_folder
    from erase.eval.metrics import ClassFID

    extractor = ClassifierFeatures(judge) if fid_features == "classifier" else InceptionFeatures()
    channels, resolution = shape[0], shape[-1]
    if Path(fid_ref).is_dir():
        real_fn, cache = (lambda: read_image_folder(fid_ref, "--fid-ref")[0]), None
    else:
        real_classes = [c for c in range(10) if not (fid_classes == "remain" and c in forget_classes)]

        def real_fn():
            data = load_dataset(fid_ref, resolution, channels)
            chosen = torch.isin(data.labels, torch.tensor(real_classes))
            return ((data.images[chosen] + 1) / 2).clamp(0, 1)

        cache = real_statistics_path(Path(cache_dir), fid_ref, resolution, fid_features,
                                     f"{real_classes}|{module_digest(extractor)}")
    return ClassFID(extractor, fid_features, str(fid_ref), fid_classes, forget_classes, real_fn, cache)
