"""`erase unlearn`: erase classes or prompts from a model folder with a chosen method; the input is never modified."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from erase.api import UNLEARN_RANGES as RANGES  # noqa: F401 (tests read it); plain flags (method and runtime fields declare their own ranges)
from erase.cli.common import add_output_arguments, add_runtime_arguments
from erase.cli.options import add_method_arguments
from erase.methods import METHODS, NOT_READ
from erase.methods.esd import ESD_TRAIN_PARAMS


class Renamed(argparse.Action):
    """A flag whose second spelling is a deprecated name: used, it still works and prints one line saying so."""

    def __init__(self, option_strings, dest, append: bool = False, **kwargs):
        self.append = append
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string != self.option_strings[0]:
            print(f"{parser.prog}: {option_string} is deprecated; use {self.option_strings[0]} (the same set)",
                  file=sys.stderr)
        if self.append:
            values = [*(getattr(namespace, self.dest) or []), values]
        setattr(namespace, self.dest, values)


class TrainMethod(argparse.Action):
    """ESD's deprecated `--train-method`: sets --train-params and prints one line saying so."""

    def __call__(self, parser, namespace, values, option_string=None):
        chosen = ESD_TRAIN_PARAMS[values]
        print(f"{parser.prog}: {option_string} {values} is deprecated; use --train-params {chosen} (the same "
              "parameters)", file=sys.stderr)
        namespace.train_params = chosen


def register(commands, method: str = "sfron") -> None:
    """`method`: the `--method` the command line names (its flags are the ones added)."""
    parser = commands.add_parser(
        "unlearn", help="erase classes (class models, classifiers), prompts (text-to-image models) or a share of "
                        "a classifier's training set",
        description="Erase classes or prompts from a diffusers model folder (CFG UNet, DDPM, DiT, Stable Diffusion 1.x/2.x, "
                    "SDXL, SD 3.x, Flux.1; each trained toward its own prediction type, recorded in run.json) "
                    "with SFR-on, its joint variant, Nabla-tau, GA, RL, SalUn, ESD or SA; or classes or a random share "
                    "of the training set from a classifier written by `erase train-classifier` (every method but ESD "
                    "and SA). "
                    "Writes the erased model (a plain diffusers folder: only the trained component is new), "
                    "mask.safetensors (saliency mask, where the method has one) and run.json.",
    )
    parser.add_argument("--model", required=True,
                        help="input diffusers model folder, or a single-file .safetensors checkpoint with "
                             "--model-config (read only)")
    parser.add_argument("--model-config", type=Path, default=None, metavar="DIR",
                        help="with --model FILE.safetensors (original CompVis / A1111 single-file layout): a local "
                             "diffusers folder of the same family whose model_index.json names the pipeline class and "
                             "whose configs and tokenizer are used (nothing is downloaded); the result is a full "
                             "diffusers folder")
    add_target_arguments(parser)
    add_data_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--method", default="sfron", choices=sorted(METHODS), help="erasure method (default: %(default)s)")
    parser.add_argument("--preset", default="auto",
                        help="named settings under the flags you give: 'auto' = the model's backbone's (sfron/joint: "
                             "cfg_unet, dit, stable_diffusion, and pixel_text for the pixel-space text models erase train makes; see "
                             "erase/methods/sfron.py SFRON_PRESETS), a backbone name, or "
                             "'none' for the method's plain defaults; run.json records it (default: %(default)s)")
    parser.add_argument("--mask", default=None,
                        help="reuse a saliency mask (mask.safetensors of an earlier run) instead of computing one; "
                             "sfron, joint, nabla_tau and salun read masks, the other methods refuse it")
    add_method_arguments(parser, METHODS, method, NOT_READ)
    if method == "esd":
        parser.add_argument("--train-method", action=TrainMethod, choices=tuple(ESD_TRAIN_PARAMS),
                            help="deprecated: ESD's name for --train-params (esd-x = xattn, esd-u = noxattn, full)")
    add_output_arguments(parser)
    add_runtime_arguments(parser)
    parser.set_defaults(run=run)


def add_target_arguments(parser) -> None:
    what = parser.add_argument_group("what to erase (classes, or prompts for text-to-image models)")
    what.add_argument("--forget-class", help="class id(s) to erase, e.g. '7' or '1,3'")
    what.add_argument("--forget-random", type=float, default=None,
                      help="classifiers: forget this share of the training split, drawn with the model's split seed "
                           "(as `erase train-classifier --forget-random` leaves it out), e.g. 0.1")
    what.add_argument("--remain-classes", help="classes to keep (default: every other class of the data or model, "
                                               "less the classes an earlier erasure removed from it)")
    what.add_argument("--forget-prompt", action="append", default=[], help="a prompt to erase (repeatable)")
    what.add_argument("--forget-prompts", type=Path, help="CSV of prompts to erase (I2P layout), e.g. nsfw.csv")
    what.add_argument("--remain-prompt", "--retain-prompt", action=Renamed, append=True, default=[],
                      help="a prompt to keep (repeatable; --retain-prompt is its deprecated name)")
    what.add_argument("--remain-prompts", "--retain-prompts", action=Renamed, type=Path,
                      help="CSV of prompts to keep, e.g. not-nsfw.csv (--retain-prompts is its deprecated name)")
    what.add_argument("--replacement-prompt", help="pseudo target of --forget-objective pseudo: eps(x_t, forget prompt) "
                                                   "is pulled toward the frozen eps(x_t, replacement prompt)")


def add_data_arguments(parser) -> None:
    data = parser.add_argument_group("forget and remain images")
    data.add_argument("--data", default="auto",
                      help="'mnist', 'digits', 'styled-digits' (real renderings for captions of the styled "
                           "digits), a folder with one subfolder per class, a folder written by `erase sample` "
                           "(index.json), or 'generated' (sample the base model); 'auto' = mnist for UNet class "
                           "models, styled-digits for models trained on it, generated for DiT and the other "
                           "text-to-image models (default: %(default)s)")
    data.add_argument("--images-per-condition", type=int, default=8,
                      help="with --data generated: images per class or prompt (default: %(default)s)")
    data.add_argument("--generation-steps", type=int, default=50,
                      help="with --data generated: sampling steps per image (default: %(default)s)")
    data.add_argument("--data-cache", type=Path, default=None,
                      help="with --data generated: reuse or fill this folder (default: OUT/generated)")


def add_model_arguments(parser) -> None:
    """The denoiser's trained parameters, gradient checkpointing and the FA probe."""
    model = parser.add_argument_group("model options")
    model.add_argument("--train-params", default="full", choices=("full", "xattn", "noxattn"),
                       help="text-to-image models: which denoiser parameters train: all; xattn, the attention "
                            "that reads the text (UNet cross-attention as ESD-x, the MMDiT joint attention of SD 3 and "
                            "Flux); noxattn, the rest but the time, text and output embeddings (ESD-u) "
                            "(default: %(default)s)")
    model.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                       help="recompute activations in the backward pass: less memory, a second forward per step "
                            "(default: on for denoisers of 300M parameters or more, e.g. every Stable Diffusion UNet)")
    probe = parser.add_argument_group("monitoring (class models): forgetting accuracy during the run, untimed")
    probe.add_argument("--monitor-every", type=int, default=0,
                       help="every N steps, sample the forget classes and record FA in run.json (default: 0 = off)")
    probe.add_argument("--monitor-samples", type=int, default=40, help="forget-class samples per probe (default: %(default)s)")
    probe.add_argument("--monitor-steps", type=int, default=25, help="DDIM steps per probe sample (default: %(default)s)")
    probe.add_argument("--monitor-classifier", default="digits",
                       help="classifier judging the probe: 'digits' (shipped) or a folder (default: %(default)s)")


def unlearn_arguments(args) -> dict:
    """The flags as `erase.unlearn` keyword arguments: one code path, so run.json is the record the API returns
    (the research harness calls `erase.unlearn` with these too)."""
    from erase.data import parse_class_ids
    from erase.engine import Runtime
    from erase.methods import METHODS
    from erase.prompts import PromptRow

    def prompts(texts: list[str], csv: Path | None) -> list:
        return [*(PromptRow(p, None, None, str(i)) for i, p in enumerate(texts)), *([csv] if csv else [])]

    forget = [*(parse_class_ids(args.forget_class) if args.forget_class else []),
              *prompts(args.forget_prompt, args.forget_prompts)]  # erase.unlearn refuses ids and prompts together
    if args.forget_prompt or args.forget_prompts:
        remain = prompts(args.remain_prompt, args.remain_prompts)
    else:
        remain = parse_class_ids(args.remain_classes) if args.remain_classes else None
    given = {name for _, cls in METHODS.values() for name in cls.__dataclass_fields__ if hasattr(args, name)}
    return dict(
        model=args.model, forget=forget, remain=remain, method=args.method, model_config=args.model_config,
        forget_random=args.forget_random, replacement_prompt=args.replacement_prompt, data=args.data,
        images_per_condition=args.images_per_condition, generation_steps=args.generation_steps,
        data_cache=args.data_cache, preset=args.preset, mask=args.mask, train_params=args.train_params,
        gradient_checkpointing=args.gradient_checkpointing, monitor_every=args.monitor_every,
        monitor_samples=args.monitor_samples, monitor_steps=args.monitor_steps,
        monitor_classifier=args.monitor_classifier, out=args.out, overwrite=args.overwrite,
        **{name: getattr(args, name) for name in given}, **{f: getattr(args, f) for f in Runtime.__dataclass_fields__})


def run(args) -> None:
    """`erase.unlearn` with the flags' arguments, then one summary line."""
    from accelerate import PartialState

    from erase.api import unlearn

    _, record = unlearn(**unlearn_arguments(args))
    if not PartialState().is_main_process:
        return
    parts = [f"{name} loss {log['value'][0]:.4f} -> {log['value'][-1]:.4f}"
             for name, log in record["losses"].items() if log["value"]]
    if record["mask_sparsity"] is not None:
        parts.append(f"mask keeps {1 - record['mask_sparsity']['overall']:.1%} of entries")
    print(f"{args.method}: {', '.join(parts)}; saved to {args.out}")
