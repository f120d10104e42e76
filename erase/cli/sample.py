"""`erase sample`: write images (PNG) plus index.json (condition and seed per image) for any later scoring."""

from __future__ import annotations

from pathlib import Path

from erase.cli.common import add_output_arguments

# Allowed values of the numeric flags (erase/cli/options.py check_ranges), refused before the model loads.
CONDITION_RANGES = {"limit": "[1, inf)", "steps": "[1, inf)", "guidance_scale": "[0, inf)", "batch_size": "[1, inf)"}
RANGES = {**CONDITION_RANGES, "n_per_condition": "[1, inf)", "seed": "[0, 4294967295]"}


def add_condition_arguments(parser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--classes", help="class ids to draw, e.g. '0-9' or '3,7'")
    which.add_argument("--prompts", type=Path, help="prompt CSV in the I2P layout (text-to-image models)")
    parser.add_argument("--limit", type=int, default=None, help="with --prompts: only the first N prompts")
    parser.add_argument("--steps", type=int, default=50, help="DDIM sampling steps (default: %(default)s)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="guidance s in eps_null + s (eps_c - eps_null) (default: the model's stored scale)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward batch (default: %(default)s)")


def register(commands) -> None:
    parser = commands.add_parser(
        "sample", help="generate images per class or prompt, seeded per image",
        description="Generate N images per condition. Image k of a condition uses seed SEED + k (for prompts: "
                    "evaluation_seed + SEED + k), so images are reproducible one by one. Writes "
                    "OUT/images/*.png and OUT/index.json (model, sampler, guidance, and each image's condition and seed).",
    )
    parser.add_argument("--model", required=True, help="diffusers model folder")
    add_condition_arguments(parser)
    parser.add_argument("--n-per-condition", type=int, default=10, help="images per class or prompt (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default: %(default)s)")
    add_output_arguments(parser)
    parser.set_defaults(run=run)


def build_jobs(args, adapter, seeds):
    """Jobs for --classes or --prompts, validated against what the model can take."""
    from erase.data import parse_class_ids
    from erase.errors import UsageError
    from erase.eval.generate import class_jobs, prompt_jobs
    from erase.eval.prompts import read_prompts

    if args.prompts is not None:
        if getattr(adapter, "takes_prompts", False) is False:
            raise UsageError(f"this {adapter.backbone} model takes class ids, not prompts; use --classes")
        return prompt_jobs(read_prompts(args.prompts, args.limit), len(seeds), seeds[0], args.guidance_scale)
    if not adapter.conditional:
        raise UsageError("this model is unconditional; it has no classes to choose")
    classes = parse_class_ids(args.classes)
    adapter.check_class_ids(classes)
    return class_jobs(classes, seeds, adapter.class_names, args.guidance_scale)


def run(args) -> None:
    import time

    from erase.record import atomic_output_dir, check_output_dir, environment
    from erase.eval.generate import generate
    from erase.eval.images import write_images
    from erase.pipelines import load_adapter
    from erase.config import check_ranges

    check_ranges(vars(args), RANGES)
    out = check_output_dir(args.out, args.overwrite, inputs=(args.model,))
    adapter = load_adapter(args.model)
    jobs = build_jobs(args, adapter, list(range(args.seed, args.seed + args.n_per_condition)))
    started = time.perf_counter()
    images = generate(adapter, jobs, args.steps, args.batch_size)
    seconds = time.perf_counter() - started
    records = [{"file": f"images/{i:06d}.png", **job.record,
                "guidance_scale": job.guidance_scale if job.guidance_scale is not None else adapter.info.get("guidance_scale")}
               for i, job in enumerate(jobs)]
    header = {"model": str(args.model), "model_info": adapter.info, "sampler": "DDIM, eta 0",
              "num_inference_steps": args.steps, "n_per_condition": args.n_per_condition, "seed": args.seed,
              "sampling_seconds": seconds, "environment": environment()}
    with atomic_output_dir(out, args.overwrite) as staging:
        write_images(staging, images, records, header)
    print(f"wrote {len(images)} images in {seconds:.1f} s to {out}")
