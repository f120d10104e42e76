"""`erase sample`: write images (PNG) plus index.json (condition and seed per image) for any later scoring."""

from __future__ import annotations

from pathlib import Path

from erase.api import SAMPLE_RANGES as RANGES  # noqa: F401 (tests read it); checked by erase.sample before the model loads
from erase.cli.common import add_output_arguments


def add_condition_arguments(parser, required: bool = True) -> None:
    which = parser.add_mutually_exclusive_group(required=required)
    which.add_argument("--classes", help="class ids to draw, e.g. '0-9' or '3,7'"
                                         + ("" if required else " (neither on an unconditional model)"))
    which.add_argument("--prompts", type=Path, help="prompt CSV in the I2P layout (text-to-image models)")
    parser.add_argument("--limit", type=int, default=None, help="with --prompts: only the first N prompts")
    parser.add_argument("--steps", type=int, default=50,
                        help="sampling steps (DDIM for DDPM-family models, flow-matching Euler for SD 3 and Flux) "
                             "(default: %(default)s)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="guidance s in eps_null + s (eps_c - eps_null) (default: the model's stored scale)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward batch (default: %(default)s)")


def register(commands) -> None:
    parser = commands.add_parser(
        "sample", help="generate images per class or prompt, seeded per image",
        description="Generate N images per condition (an unconditional model: N images). Image k of a condition uses seed SEED + k (for prompts: "
                    "evaluation_seed + SEED + k), so images are reproducible one by one. Writes "
                    "OUT/images/*.png and OUT/index.json (model, sampler, guidance, and each image's condition and seed).",
    )
    parser.add_argument("--model", required=True,
                        help="diffusers model folder, or a single-file .safetensors checkpoint with --model-config")
    parser.add_argument("--model-config", type=Path, default=None, metavar="DIR",
                        help="with --model FILE.safetensors: a local diffusers folder of the same family (configs, "
                             "tokenizer; nothing is downloaded)")
    add_condition_arguments(parser, required=False)
    parser.add_argument("--n-per-condition", type=int, default=10, help="images per class or prompt, or in all from an unconditional model (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default: %(default)s)")
    add_output_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> None:
    from erase.api import sample

    images, record = sample(args.model, args.classes, args.prompts, model_config=args.model_config,
                            n_per_condition=args.n_per_condition, seed=args.seed, steps=args.steps,
                            guidance_scale=args.guidance_scale, batch_size=args.batch_size, limit=args.limit,
                            out=args.out, overwrite=args.overwrite)
    print(f"wrote {len(images)} images in {record['sampling_seconds']:.1f} s to {args.out}")
