"""`erase benchmark-text`: every method that runs on text models erases styles and digits *by their prompts* from
the shipped text-to-image model of styled digits, against models retrained without the concept (RT), scored in
UnlearnCanvas' terms (UA, IRA, CRA) plus digit kept, FID of the remaining prompts against RT's and leak under the
other spelling and an unused template. Writes OUT/results.json and docs/benchmark-text.md.

Every finished unit (an RT model's scores, a run's scores, an attack) is a small JSON file in --record (committed:
`eval/benchmark-text/`), keyed by the flags and the base model's digest; a rerun, in this session or a later one,
reuses it and only runs what is missing, so the benchmark can be finished over several sessions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from erase.models import SHIPPED_TEXT_MODEL

# Concepts (erase.styled's names). The development ones tune; the test ones are reported; the held-out styles are
# never erased by the benchmark or its tests (they are only other styles: IRA's and CRA's samples).
DEV_CONCEPTS = {"style": "style:neon", "digit": "digit:5"}
TEST_CONCEPTS = ["style:sepia", "style:chalk", "digit:3", "digit:7"]
HELD_OUT_STYLES = ["crimson", "blueprint", "candy", "outline", "pencil"]
RECORD = Path(__file__).resolve().parents[2] / "eval" / "benchmark-text"
# `erase train` flags that repeat the base model's recipe, read from its run.json and its folder's configs
RECIPE_FLAGS = ("steps", "batch_size", "lr", "label_dropout", "ema_decay", "max_grad_norm", "lr_schedule")


def recipe_flags(model: Path) -> list[str]:
    """The `erase train` flags that trained `model` (a text model written by `erase train --conditioning text`)."""
    from erase.errors import UsageError

    record_file = model / "run.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    if record.get("command") != "train" or record.get("conditioning") != "text":
        raise UsageError(f"{str(model)!r} has no `erase train --conditioning text` run.json; RT repeats the base "
                         "model's recipe, so pass a model written by `erase train --data styled-digits --conditioning text`")
    width = json.loads((model / "text_encoder" / "config.json").read_text())["hidden_size"]
    flags = ["--data", record["data"], "--conditioning", "text", "--resolution", record["resolution"],
             "--channels", ",".join(str(c) for c in record["channels"]), "--text-width", width,
             "--layers-per-block", record.get("layers_per_block", 1), "--seed", record["runtime"]["seed"],
             "--prediction-type", record["training_target"]["prediction_type"]]
    flags += ["--attention"] if record.get("attention") else []
    for name in RECIPE_FLAGS:
        value = record["config"].get(name)
        flags += [f"--{name.replace('_', '-')}", value] if value is not None else []
    return [str(f) for f in flags]


def rt_flags(model: Path, concept: str, guidance_scale: float, steps: int | None = None) -> list[str]:
    """RT's `erase train` flags: the base recipe without every image of `concept` (KIND:NAME)."""
    flags = recipe_flags(model) + (["--steps", str(steps)] if steps else [])
    return flags + ["--exclude-concept", concept, "--guidance-scale", str(guidance_scale)]


# `erase unlearn` flags per benchmarked method on the text model: the digit benchmark's settings (erase/cli/benchmark.py
# SETTINGS, each paper's setting at lr x steps held), ESD in both of its published forms; SFR-on and Nabla-tau at
# `erase unlearn`'s defaults for this model (SFR-on's pixel_text preset), Nabla-tau at its class-UNet budget.
TEXT_SETTINGS = {
    "sfron": [],
    "nabla_tau": ["--steps", 150, "--batch-size", 64],  # its cfg_unet preset's budget (it has no pixel_text one)
    "ga": ["--steps", 100, "--lr", 1e-4, "--batch-size", 64],
    "rl": ["--steps", 100, "--lr", 1e-4, "--batch-size", 64],
    "salun": ["--steps", 100, "--lr", 1e-4, "--batch-size", 64],
    "esd-x": ["--method", "esd", "--train-params", "xattn", "--steps", 100, "--lr", 1e-4],
    "esd-u": ["--method", "esd", "--train-params", "noxattn", "--steps", 100, "--lr", 1e-4],
    # SA replays one image per remain prompt: 210 (a style) or 216 (a digit) images where its class-model default
    # (16 per class) would generate 3360 here, 400 s of a 450 s run; the class benchmark replays 144.
    "sa": ["--steps", 100, "--lr", 1e-3, "--batch-size", 64, "--replay-per-condition", 1],
}
RANGES = {"extra_seeds": "[0, inf)", "per_prompt": "[1, inf)", "sample_steps": "[1, inf)", "steps": "[1, inf)",
          "rt_steps": "[1, inf)", "attack_steps": "[1, inf)", "attack_samples": "[1, inf)", "seed": "[0, 4294967295]"}
UA_MIN = 0.95  # the tuning rule: among configurations with UA >= this on the development concept, the best retain


def method_flags(name: str, extra: list) -> list[str]:
    """`erase unlearn` flags of a benchmarked method name ('esd-x' is ESD with --train-params xattn)."""
    settings = [str(f) for f in TEXT_SETTINGS[name]]
    head = [] if "--method" in settings else ["--method", name]
    return head + settings + [str(f) for f in extra]


def tuning_grid(name: str) -> list[list]:
    """The method's tuning configurations: the digit benchmark's star (erase/cli/tuning.py GRIDS) under this
    benchmark's fixed flags; ESD's two forms share ESD's star."""
    from erase.cli.tuning import GRIDS

    return GRIDS["esd" if name.startswith("esd") else name]


def concept_prompts(concept) -> tuple[list[str], list[str]]:
    """(forget, remain) prompts of an erasure of `concept`: its prompts in the first spelling and the erasure
    templates, and those of every other concept of its kind (erase demo --text's sets)."""
    from erase.styled import STYLES, Concept, erasure_prompts

    count = len(STYLES) if concept.kind == "style" else 10
    remain = [p for i in range(count) if i != concept.index for p in erasure_prompts(Concept(concept.kind, i))]
    return erasure_prompts(concept), remain


def write_prompt_files(folder: Path, concept) -> dict[str, Path]:
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, prompts in zip(("forget", "remain"), concept_prompts(concept)):
        files[name] = folder / f"{concept.name.replace(':', '-')}-{name}.csv"
        with files[name].open("w", newline="") as handle:
            csv.writer(handle).writerows([["prompt"], *([p] for p in prompts)])
    return files


def sample_prompts(adapter, prompts: list[str], per_prompt: int, seed: int, steps: int, name: str):
    """`per_prompt` images of every prompt, image k of each seeded seed + k (the same seeds for every model)."""
    from erase.prompts import PromptRow
    from erase.sampling import generate, prompt_jobs

    jobs = prompt_jobs([PromptRow(p, None, None, str(i)) for i, p in enumerate(prompts)], per_prompt, seed)
    return generate(adapter, jobs, steps, description=f"sample {name}"), [job.condition for job in jobs]


def scored(images, conditions, concept, forget_prompts, judges, reference=None) -> dict:
    """UA, IRA, CRA, kept, leak (erase.eval.concepts) and, with `reference` (RT's samples of the same prompts and
    seeds), the FID of the samples of prompts not naming the concept against RT's, in the style judge's features."""
    import torch

    from erase.eval.concepts import ConceptAccuracy
    from erase.eval.fid import FID, ClassifierFeatures
    from erase.styled import facts_of_prompt

    metric = ConceptAccuracy(*judges, concept, forget_prompts)
    metric.update(images, conditions)
    scores = metric.compute()
    if reference is not None:
        keep = torch.tensor([concept.of(facts_of_prompt(c)) != concept.index for c in conditions])
        fid = FID(ClassifierFeatures(judges[0]), "style judge")
        fid.update(reference[keep], real=True)
        fid.update(images[keep], real=False)
        scores["fid_rt"] = fid.compute()
    return scores


def register(commands) -> None:
    parser = commands.add_parser(
        "benchmark-text", help="styles and digits erased by prompt from the shipped text model vs RT; UA / IRA / CRA",
        description="Tunes every method on a development style and digit (erase/cli/tuning.py's star of "
                    "configurations; the rule: the best mean of IRA and CRA among configurations with UA >= 95%, "
                    "else the highest UA), then erases each test concept with three seeds, by its prompts "
                    f"(erase.styled.erasure_prompts), from the shipped text model; trains RT without every image of "
                    "the concept with the base model's own recipe; samples every model on every digit x style "
                    "prompt and the leak prompts with the same seeds and scores UA, IRA, CRA, digit kept, FID of the "
                    "remaining prompts against RT's and leak. Every finished unit is a JSON file in --record, reused "
                    "by a rerun with the same flags. Writes OUT/results.json and REPORT_DIR/benchmark-text.md.")
    parser.add_argument("--model", type=Path, default=SHIPPED_TEXT_MODEL,
                        help="base text model written by `erase train --conditioning text` (default: the shipped one)")
    parser.add_argument("--methods", default=",".join(TEXT_SETTINGS),
                        help="comma-separated, of: %(default)s (default: all)")
    parser.add_argument("--concepts", default=",".join(TEST_CONCEPTS),
                        help="test concepts, KIND:NAME (default: %(default)s)")
    parser.add_argument("--no-tune", dest="tune", action="store_false",
                        help="skip tuning: every method runs its TEXT_SETTINGS entry")
    parser.add_argument("--no-attacks", dest="attacks", action="store_false",
                        help="skip the attacks (concept inversion and the adversarial prompt on the base, RT and each "
                             "method's first-seed model)")
    parser.add_argument("--attack-steps", type=int, default=None,
                        help="override both attacks' steps (quick checks; default: erase attack's, 200 and 40)")
    parser.add_argument("--attack-samples", type=int, default=50,
                        help="images judged per attacked model, before and after each attack (default: %(default)s)")
    parser.add_argument("--extra-seeds", type=int, default=2, help="seeds beyond --seed per test concept (default: %(default)s)")
    parser.add_argument("--per-prompt", type=int, default=3, help="scored samples per prompt and model (default: %(default)s)")
    parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps per sample (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help="override every method's steps (quick checks)")
    parser.add_argument("--rt-steps", type=int, default=None, help="override RT's training steps (quick checks)")
    parser.add_argument("--seed", type=int, default=0, help="first seed of runs and samples (default: %(default)s)")
    parser.add_argument("--record", type=Path, default=RECORD,
                        help="folder of finished units' JSON (default: the repository's eval/benchmark-text)")
    parser.add_argument("--rt-cache", type=Path, default=None,
                        help="folder of RT models (default: RECORD/rt-models, committed so that later sessions reuse them)")
    parser.add_argument("--report-dir", type=Path, default=None, help="where benchmark-text.md goes (default: OUT)")
    parser.add_argument("--out", type=Path, default=Path("benchmark-text-out"), help="output folder (default: %(default)s)")
    parser.set_defaults(run=run)


def checked(args) -> tuple[list[str], list]:
    from erase.config import check_ranges
    from erase.errors import UsageError
    from erase.styled import parse_concept

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(TEXT_SETTINGS))
    if unknown:
        raise UsageError(f"--methods: unknown {unknown}; choose from {', '.join(TEXT_SETTINGS)}")
    check_ranges(vars(args), RANGES)
    concepts = [parse_concept(c.strip(), "--concepts") for c in args.concepts.split(",") if c.strip()]
    dev = {parse_concept(c).name for c in DEV_CONCEPTS.values()}
    if dev & {c.name for c in concepts}:
        raise UsageError(f"--concepts {sorted(dev & {c.name for c in concepts})} are development concepts (tuned on); "
                         "test on others")
    return methods, concepts


class Bench:
    """What every unit shares: flags, the base model and its digest, the judges."""

    def __init__(self, args):
        from erase.cli.harness import model_digest
        from erase.eval.classifier import load_classifier
        from erase.pipelines import load_adapter

        self.args = args
        self.base = load_adapter(args.model)
        self.digest = model_digest(args.model)
        self.guidance = self.base.info.get("guidance_scale", 1.0)
        self.judges = load_classifier("styles"), load_classifier("styled-digits")
        self.sampling = {"per_prompt": args.per_prompt, "sample_steps": args.sample_steps, "seed": args.seed}

    def unit(self, part: str, name: str, key: dict, compute) -> dict:
        from erase.cli.harness import cached_json

        return cached_json(self.args.record / part / f"{name}.json",
                           {"base": self.digest, **self.sampling, **key}, compute)

    def samples(self, adapter, concept, name: str):
        from erase.styled import evaluation_prompts

        return sample_prompts(adapter, evaluation_prompts(concept), self.args.per_prompt, self.args.seed,
                              self.args.sample_steps, name)

    def run_flags(self, method: str, concept, extra: list, seed: int) -> list:
        """`erase unlearn` flags of one erasure of `concept` (its prompt files written under OUT/prompts)."""
        files = write_prompt_files(self.args.out / "prompts", concept)
        return ["--model", self.args.model, "--forget-prompts", files["forget"], "--remain-prompts", files["remain"],
                *method_flags(method, extra), *(["--steps", self.args.steps] if self.args.steps else []),
                "--seed", seed]

    def attacked(self, adapter, concept) -> dict:
        """The attacks on one model: the attacked prompt's FA before, after concept inversion and after the
        adversarial prompt (erase attack's budgets, or --attack-steps), judged by the concept's judge in
        --attack-samples images each."""
        import time

        from erase.eval.attack import attack_prompt, make_judge, success_rate
        from erase.eval.inversion import INVERSION_LR, INVERSION_STEPS
        from erase.eval.prompt_attacks import ADVERSARIAL_LR, ADVERSARIAL_STEPS, ADVERSARIAL_TOKENS

        started = time.perf_counter()
        prompt, template, real = attack_setup(concept, adapter.image_shape[-1])
        judge = make_judge(self.judges[0 if concept.kind == "style" else 1], concept.index, False, 0.0)
        seed, steps, samples = self.args.seed, self.args.sample_steps, self.args.attack_samples
        rate = lambda a, condition: success_rate(a, condition, judge, samples, steps, seed)  # noqa: E731
        before = rate(adapter, int(adapter.register_prompts([prompt])[0]))  # first, as erase attack does
        inversion = attack_prompt(adapter, real, prompt, "inversion", {
            "steps": self.args.attack_steps or INVERSION_STEPS, "lr": INVERSION_LR, "template": template}, rate, seed)
        adversarial = attack_prompt(adapter, real, prompt, "adversarial", {
            "steps": self.args.attack_steps or ADVERSARIAL_STEPS, "lr": ADVERSARIAL_LR, "tokens": ADVERSARIAL_TOKENS},
            rate, seed)
        row = {"prompt": prompt, "template": template, "images": len(real),
               "fa_before": before,
               "fa_inversion": inversion["fa_after"], "fa_adversarial": adversarial["fa_after"],
               "adversarial_prompt": adversarial["prompt"], "seconds": time.perf_counter() - started}
        print(f"attacks on {prompt!r}: FA {row['fa_before']:.1%}, inversion {row['fa_inversion']:.1%}, "
              f"adversarial {row['fa_adversarial']:.1%}")
        return row

    def erasure(self, method: str, concept, extra: list, seed: int, folder: Path, reference=None) -> dict:
        """Erase `concept` with `method` (its flags + `extra`) into `folder`; scores, time and the run's facts."""
        from erase.cli.harness import cached_unlearn, method_seconds
        from erase.pipelines import load_adapter

        run_record = cached_unlearn(folder, self.run_flags(method, concept, extra, seed))
        images, conditions = self.samples(load_adapter(folder), concept, f"{method} {concept.name} seed {seed}")
        forget = run_record.get("erased", {}).get("forget_prompts") or concept_prompts(concept)[0]
        return {"scores": scored(images, conditions, concept, forget, self.judges, reference),
                "seconds": method_seconds(run_record["timings"]), "steps": run_record["config"]["steps"],
                "config": run_record["config"], "preset": run_record.get("preset"),
                "mask_sparsity": run_record.get("mask_sparsity"), "grid": grid_column(images, conditions, concept)}


GRID_DIGITS = (0, 3, 4, 7)


def attack_setup(concept, resolution: int):
    """(prompt, inversion template, real images in [-1, 1]) of the attacks on `concept`: its prompt for the first
    grid digit (a style) or the first style (a digit) in the first template; the template holds the learned token
    where the concept's word was; the images are the first INVERSION_IMAGES renderings of that digit in that style."""
    from erase.eval.inversion import INVERSION_IMAGES
    from erase.styled import STYLES, TEMPLATES, caption, digit_name, render_all

    pixels, digits, styles = render_all(resolution)
    if concept.kind == "style":
        digit, style = GRID_DIGITS[0], concept.index
        template = TEMPLATES[0].format(digit=digit_name(digit, 0), style="{}")
    else:
        digit, style = concept.index, 0
        template = TEMPLATES[0].format(digit="{}", style=STYLES[style].names[0])
    keep = (digits == digit) & (styles == style)
    return caption(digit, style), template, pixels[keep][:INVERSION_IMAGES] * 2 - 1


def grid_column(images, conditions, concept) -> list:
    """The first sample of the concept's prompt for each grid digit (a style) or each of three styles (a digit), as
    uint8 lists: the report's grid is drawn from the record alone."""
    from erase.styled import caption

    if concept.kind == "style":
        wanted = [caption(d, concept.index) for d in GRID_DIGITS]
    else:
        wanted = [caption(concept.index, s) for s in range(3)]
    picked = [images[conditions.index(p)] for p in wanted]
    return [(p.clamp(0, 1) * 255).round().byte().tolist() for p in picked]


def tune(bench: Bench, methods: list[str]) -> dict:
    """Every configuration of each method's grid on the development concept of each kind; the rule's choice."""
    from erase.cli.tuning import select
    from erase.styled import parse_concept

    sweep, chosen = {}, {}
    for kind, spec in DEV_CONCEPTS.items():
        concept = parse_concept(spec)
        for method in methods:
            rows = []
            for index, extra in enumerate(tuning_grid(method)):
                flags = method_flags(method, extra)
                name = f"{method}-{index}-{concept.name.replace(':', '-')}"
                value = bench.unit("tune", name, {"flags": flags, "steps": bench.args.steps,
                                                  "defaults": defaults_of(method)},
                                   lambda: bench.erasure(method, concept, extra, bench.args.seed,
                                                         bench.args.out / "tune" / name))
                s = value["scores"]
                rows.append({"config": index, "flags": [str(f) for f in extra], "seconds": value["seconds"],
                             "ua": s["unlearning_accuracy"], "ira": s["in_domain_retain_accuracy"],
                             "cra": s["cross_domain_retain_accuracy"],
                             # select's spelling: fa = 1 - UA, ra = the retain mean
                             "fa": 1 - s["unlearning_accuracy"],
                             "ra": (s["in_domain_retain_accuracy"] + s["cross_domain_retain_accuracy"]) / 2})
            sweep.setdefault(kind, {})[method] = rows
            chosen.setdefault(kind, {})[method] = select(rows, 1 - UA_MIN)
    return {"dev": DEV_CONCEPTS, "sweep": sweep, "chosen": chosen, "ua_min": UA_MIN}


def defaults_of(method: str) -> dict:
    from erase.cli.harness import method_defaults

    return method_defaults("esd" if method.startswith("esd") else method)


def run(args) -> None:
    import time

    from safetensors.torch import load_file, save_file

    from erase.cli.harness import cached_training, cached_unlearn
    from erase.pipelines import load_adapter
    from erase.record import environment, write_json
    from erase.eval.report_text import write_report

    methods, concepts = checked(args)
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    tuning = tune(bench, methods) if args.tune else None
    rows = []
    for concept in concepts:
        label = concept.name.replace(":", "-")
        flags = rt_flags(args.model, concept.name, bench.guidance, args.rt_steps)
        rt_file = args.record / "rt" / f"{label}.safetensors"

        def rt_unit():
            folder = cached_training((args.rt_cache or args.record / "rt-models") / f"without-{label}", flags,
                                     f"without {concept.name}")
            images, conditions = bench.samples(load_adapter(folder), concept, f"RT without {concept.name}")
            rt_file.parent.mkdir(parents=True, exist_ok=True)
            save_file({"images": (images.clamp(0, 1) * 255).round().byte()}, str(rt_file))
            seconds = json.loads((folder / "run.json").read_text())["timings"]["train"]
            return {"scores": scored(images, conditions, concept, [], bench.judges), "seconds": seconds,
                    "steps": args.rt_steps, "grid": grid_column(images, conditions, concept)}

        rt = bench.unit("rt", label, {"flags": flags}, rt_unit)
        reference = load_file(str(rt_file))["images"].float() / 255

        def base_unit():
            images, conditions = bench.samples(bench.base, concept, "base")
            return {"scores": scored(images, conditions, concept, [], bench.judges, reference), "seconds": 0.0,
                    "grid": grid_column(images, conditions, concept)}

        base = bench.unit("base", label, {"rt": flags}, base_unit)
        rows += [{"concept": concept.name, "method": "base", "seed": args.seed, **base},
                 {"concept": concept.name, "method": "RT", "seed": args.seed, **rt}]
        for method in methods:
            extra = tuning["chosen"][concept.kind][method]["flags"] if tuning else []
            for seed in range(args.seed, args.seed + args.extra_seeds + 1):
                name = f"{method}-{label}-seed{seed}"
                value = bench.unit("runs", name, {"flags": method_flags(method, extra), "steps": args.steps,
                                                  "defaults": defaults_of(method), "rt": flags},
                                   lambda: bench.erasure(method, concept, extra, seed, args.out / "runs" / name,
                                                         reference))
                rows.append({"concept": concept.name, "method": method, "seed": seed, "flags": extra, **value})
        if args.attacks:
            rows_of = {r["method"]: r for r in rows if r["concept"] == concept.name and r["seed"] == args.seed}
            rt_folder = (args.rt_cache or args.record / "rt-models") / f"without-{label}"
            models = {"base": lambda: bench.base, "RT": lambda: load_adapter(rt_folder)}
            for method in methods:
                extra = rows_of[method]["flags"]

                def erased(method=method, extra=extra):
                    folder = args.out / "runs" / f"{method}-{label}-seed{args.seed}"
                    cached_unlearn(folder, bench.run_flags(method, concept, extra, args.seed))  # (a fresh clone: rerun)
                    return load_adapter(folder)

                models[method] = erased
            for name, model in models.items():
                key = {"model": name, "rt": flags, "attack_steps": args.attack_steps, "samples": args.attack_samples,
                       **({"flags": method_flags(name, rows_of[name]["flags"]), "steps": args.steps,
                           "defaults": defaults_of(name)} if name in methods else {})}
                rows_of[name]["attacks"] = bench.unit("attacks", f"{name}-{label}", key,
                                                      lambda model=model: bench.attacked(model(), concept))
    results = {"command": "benchmark-text", "model": str(args.model), "guidance_scale": bench.guidance,
               "concepts": [c.name for c in concepts], "methods": methods, "held_out_styles": HELD_OUT_STYLES,
               "per_prompt": args.per_prompt, "sample_steps": args.sample_steps, "seed": args.seed,
               "extra_seeds": args.extra_seeds, "steps_override": args.steps, "rt_steps_override": args.rt_steps,
               "attacks": args.attacks, "attack_steps_override": args.attack_steps,
               "tuning": tuning, "rows": rows, "seconds": time.time() - started, "environment": environment()}
    write_json(args.out / "results.json", results)
    report = write_report(results, args.report_dir or args.out)
    print(f"results: {args.out / 'results.json'}   report: {report}")
