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
        description="Train a class-conditional UNet2DModel (or, with --conditioning text, a text-conditional "
                    "UNet2DConditionModel on a frozen tiny CLIP text encoder, one prompt per class) with label "
                    "dropout for classifier-free guidance, toward the --prediction-type target; saves a diffusers "
                    "folder (model_index.json, unet/, scheduler/, and text_encoder/ and tokenizer/ for text) plus "
                    "run.json.",
    )
    add_data_argument(parser)
    parser.add_argument("--resolution", type=int, default=16, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--channels", default="32,64", help="UNet block widths, comma-separated (default: %(default)s)")
    parser.add_argument("--attention", action="store_true", help="add self-attention at the lowest-resolution level")
    parser.add_argument("--layers-per-block", type=int, default=1, help="ResNet layers per UNet block (default: %(default)s)")
    parser.add_argument("--exclude-classes", default=None,
                        help="class ids left out of the training data, e.g. '7' or '1,3' (the model keeps all class ids)")
    parser.add_argument("--exclude-concept", action="append", default=[], metavar="KIND:NAME",
                        help="for captioned data (styled-digits): leave out every image of a concept, e.g. "
                             "'style:neon' or 'digit:3' (repeatable); the model still learns every caption's words "
                             "it meets elsewhere (the retrained-without-concept gold standard)")
    parser.add_argument("--text-width", type=int, default=32,
                        help="width of the frozen random CLIP text encoder of --conditioning text (default: %(default)s)")
    parser.add_argument("--hold-out-per-class", type=int, default=0,
                        help="keep this many random images per class out of training (seeded by --split-seed), for "
                             "membership inference (`erase mia`); the model records which (default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of --hold-out-per-class's draw (default: %(default)s)")
    parser.add_argument("--conditioning", default="class", choices=("class", "text"),
                        help="class ids (UNet2DModel with a class table) or prompts (a pixel-space "
                             "StableDiffusionPipeline folder without VAE; erase it with --forget-prompt) "
                             "(default: %(default)s)")
    parser.add_argument("--prompt-template", default=None,
                        help="the prompt of each class for --conditioning text; {name} is the class name, {word} "
                             f"the English word of a digit name (default: {DEFAULT_TEMPLATE!r})")
    parser.add_argument("--prediction-type", default="epsilon", choices=PREDICTION_CHOICES,
                        help="what the model learns to predict: epsilon (noise), v_prediction (v = sqrt(abar) eps - "
                             "sqrt(1 - abar) x0), sample (x0), or flow_matching (velocity eps - x0 on "
                             "FlowMatchEulerDiscreteScheduler sigmas) (default: %(default)s)")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="default guidance scale stored in the model, eps_null + s (eps_c - eps_null) (default: %(default)s)")
    add_dataclass_arguments(parser.add_argument_group("training"), TrainConfig)
    add_output_arguments(parser)
    add_runtime_arguments(parser)
    parser.set_defaults(run=run)


PREDICTION_CHOICES = ("epsilon", "v_prediction", "sample", "flow_matching")
DEFAULT_TEMPLATE = "a photo of the digit {word}"
DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


def class_prompts(template: str, class_names) -> list[str]:
    """One prompt per class: `template` with {name} and {word} (the English word of a digit name) filled in."""
    from erase.errors import OptionError

    prompts = []
    for name in class_names:
        word = DIGIT_WORDS[int(name)] if str(name).isdigit() and int(name) < 10 else str(name)
        try:
            prompts.append(template.format(name=name, word=word))
        except (KeyError, IndexError, ValueError) as error:
            raise OptionError(f"--prompt-template {template!r} is not a template of {{name}} and {{word}} ({error})") from None
    if len(set(prompts)) != len(prompts):
        raise OptionError(f"--prompt-template {template!r} gives two classes the same prompt; use {{name}} or {{word}}")
    return prompts


def training_scheduler(prediction_type: str, conditioning: str):
    """The noise schedule a new model trains on: DDPM's linear betas for class models (the shipped model's), Stable
    Diffusion's scaled-linear betas for text models, or flow-matching sigmas (shift 1)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if prediction_type == "flow_matching":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    if conditioning == "text":
        return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             clip_sample=False, prediction_type=prediction_type)
    return DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)


# erase/config.py check_ranges: plain flags of this command (TrainConfig and Runtime declare their own)
RANGES = {"resolution": "[8, inf)", "text_width": "[8, inf)", "layers_per_block": "[1, inf)", "guidance_scale": "[0, inf)",
          "hold_out_per_class": "[0, inf)", "split_seed": "[0, 4294967295]"}


def run(args) -> None:
    import torch

    from erase.config import check_ranges

    check_ranges(vars(args), RANGES)

    from erase.errors import UsageError
    from erase.checkpoint import find_state
    from erase.record import (atomic_output_dir, check_output_dir, checkpoint_folder, discard_checkpoints,
                              environment, write_json)
    from erase.train import train

    if args.conditioning == "class" and args.data == "styled-digits":
        raise UsageError("--data styled-digits is captioned: train it with --conditioning text")
    if args.prompt_template is not None and args.data == "styled-digits":
        raise UsageError("--data styled-digits brings its own captions; leave --prompt-template out")
    if args.conditioning == "class" and args.prompt_template is not None:
        raise UsageError("--prompt-template names the prompts of --conditioning text; add --conditioning text or "
                         "leave it out")
    if args.conditioning == "text" and (args.attention or args.layers_per_block != 1):
        raise UsageError("--attention and --layers-per-block shape the class-conditional UNet; the text model's UNet "
                         "has cross-attention at its lower level and one layer per block: leave them out")
    out = check_output_dir(args.out, args.overwrite)
    config, runtime = dataclass_from_args(TrainConfig, args), dataclass_from_args(Runtime, args)
    checkpoints = checkpoint_folder(out, runtime, args.overwrite)
    resumed_from = str(find_state(runtime.resume)) if runtime.resume is not None else None
    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        raise UsageError(f"--channels {args.channels!r} is not a comma-separated list of widths, e.g. '32,64'") from None
    dataset, train_data, held_out, excluded = training_data(args)
    torch.manual_seed(runtime.seed)
    adapter, train_data = new_model(args, dataset, train_data, channels, held_out, excluded)
    started = time.time()
    result = train(adapter, train_data, config, runtime)
    if not result["is_main_process"]:
        return
    with atomic_output_dir(out, args.overwrite) as staging:
        adapter.save_pretrained(staging)
        write_json(staging / "run.json", {
            "command": "train", "config": config, "runtime": runtime, "data": args.data, "resolution": args.resolution,
            "conditioning": args.conditioning, "training_target": adapter.training_record(),
            "prompts": adapter.class_names if args.conditioning == "text" else None,
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


def training_data(args):
    """(the dataset, what trains: without --exclude-classes, held-out split recorded or None, the excluded ids)."""
    from erase.data import channels_of, load_dataset, parse_class_ids, split_by_class, split_held_out

    dataset = load_dataset(args.data, args.resolution, channels_of(args.data))
    held_out = None
    if args.hold_out_per_class:
        held_out = {"per_class": args.hold_out_per_class, "split_seed": args.split_seed, "data": args.data,
                    "resolution": args.resolution}
        dataset = split_held_out(dataset, args.hold_out_per_class, args.split_seed)[0]
    excluded = parse_class_ids(args.exclude_classes) if args.exclude_classes else []
    train_data = split_by_class(dataset, excluded)[1] if excluded else dataset
    if args.exclude_concept:
        train_data = without_concepts(train_data, args.exclude_concept)
    return dataset, train_data, held_out, excluded


def without_concepts(dataset, specs: list[str]):
    """`dataset` without the images of each 'kind:name' concept (styled-digits: style:KEY, digit:D)."""
    import torch

    from erase.errors import UsageError
    from erase.styled import parse_concept

    if not dataset.concepts:
        raise UsageError(f"--exclude-concept applies to captioned data (styled-digits); {dataset.name} has classes: "
                         "use --exclude-classes")
    keep = torch.ones(len(dataset), dtype=torch.bool)
    for spec in specs:
        concept = parse_concept(spec, "--exclude-concept")
        keep &= dataset.concepts[concept.kind] != concept.index
    return dataset.subset(keep, f"{dataset.name} without {', '.join(specs)}")


def new_model(args, dataset, train_data, channels: tuple, held_out, excluded: list):
    """A freshly initialised model of --conditioning's kind and the training data labelled as it takes them
    (prompt ids for a text model)."""
    from erase.pipelines.cfg_unet import CFGUNetAdapter

    scheduler = training_scheduler(args.prediction_type, args.conditioning)
    facts = dict(guidance_scale=args.guidance_scale, excluded_classes=excluded, trained_on=dataset.name,
                 **({"held_out": held_out} if held_out else {}),
                 **({"excluded_concepts": list(args.exclude_concept)} if args.exclude_concept else {}))
    if args.conditioning != "text":
        return CFGUNetAdapter.create(
            args.resolution, channels, dataset.images.shape[1], num_classes=len(dataset.class_names),
            attention=args.attention, layers_per_block=args.layers_per_block, class_names=dataset.class_names,
            scheduler=scheduler, **facts), train_data
    import tempfile

    from erase.data import ImageDataset
    from erase.pipelines.stable_diffusion import StableDiffusionAdapter

    words = ()
    if dataset.concepts:  # captioned data: its class names are the captions, its words whole tokens
        import re

        prompts, facts["captions"] = list(dataset.class_names), f"{dataset.name}: {len(dataset.class_names)} captions"
        words = sorted({w for p in prompts for w in re.findall(r"[a-z]+|[0-9]", p)})
    else:
        prompts = class_prompts(args.prompt_template or DEFAULT_TEMPLATE, dataset.class_names)
        facts["class_prompts"] = prompts
    # characters + start and end tokens; captions of whole-word tokens are short, 32 leaves room for attack tokens
    max_length = 32 if words else max(32, -(-(max(len(p) for p in prompts) + 2) // 16) * 16)
    with tempfile.TemporaryDirectory(prefix="erase-tokenizer-") as scratch:  # save_pretrained rewrites it
        adapter = StableDiffusionAdapter.create_pixel_model(args.resolution, dataset.images.shape[1], scheduler,
                                                            scratch, channels, max_length, args.text_width, words,
                                                            **facts)
    ids = adapter.register_prompts(prompts)
    return adapter, ImageDataset(train_data.images, ids[train_data.labels], adapter.class_names, train_data.name)
