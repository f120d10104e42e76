"""`erase attack`: try to bring an erased class or prompt back (concept inversion, adversarial prompt, relearning)
and judge what comes back."""

from __future__ import annotations

from pathlib import Path

from erase.eval.attack import ATTACK_RANGES as RANGES  # noqa: F401 (tests read it); checked by erase.attack
from erase.eval.attack import ATTACKS


def register(commands) -> None:
    parser = commands.add_parser(
        "attack", help="attack an erased model: concept inversion, adversarial prompt or relearning; FA before and after",
        description="Runs an attack against the frozen model (its weights are digested before and after and never "
                    "written) for each attacked class or prompt, then samples it and judges the samples (the classifier's "
                    "class, or NudeNet): FA before and after. inversion: a new class-embedding vector, or a new "
                    "token in 'a photo of {}', learned on --images real images (Pham et al. 2024, textual inversion "
                    "as an attack); adversarial (text models): --tokens vocabulary tokens in front of the erased "
                    "prompt, optimised and projected (UnlearnDiffAtk), printed as a prompt; relearn: fine-tuning on "
                    "--images real images, FA after each of --relearn-steps. Run it on the base model (the ceiling: the attack "
                    "has power) and on a model retrained without the class (the floor) to read the erased model's "
                    "number; `erase benchmark` does.",
    )
    parser.add_argument("--model", type=Path, required=True, help="the model folder to attack (never modified)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--forget-class", default=None,
                      help="class model: class id(s) to bring back, e.g. '7' or '1,3' (default: those the model's "
                           "record says it erased)")
    what.add_argument("--forget-prompt", action="append", default=None,
                      help="text model: an erased prompt to bring back, repeatable (default: the recorded ones)")
    parser.add_argument("--attack", default="inversion", choices=ATTACKS,
                        help="inversion: a new class vector or prompt token learned on the images (Pham et al.); "
                             "adversarial (text models): vocabulary tokens in front of the prompt (UnlearnDiffAtk); "
                             "relearn: fine-tuning (default: %(default)s)")
    parser.add_argument("--images", type=int, default=None,
                        help="real images of the concept the attacker has (default: 25 as Pham et al.; relearn 32)")
    parser.add_argument("--steps", type=int, default=None,
                        help="Adam steps of inversion (default: 200) or of the adversarial prompt (default: 40)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: inversion 0.08, textual inversion's 5e-3 scaled by batch 16 as "
                             "Pham et al.; adversarial 0.01; relearn 1e-4)")
    parser.add_argument("--template", default=None,
                        help="inversion on text models: the prompt the learned token is put in, with {} for it (default: "
                             "'a photo of {}', Pham et al.'s object template); use your model's own caption form")
    parser.add_argument("--tokens", type=int, default=None,
                        help="adversarial: tokens put in front of the prompt (default: 5, UnlearnDiffAtk as recalled, unchecked)")
    parser.add_argument("--relearn-steps", default="10,25,50",
                        help="relearn: FA after these many fine-tuning steps (default: %(default)s)")
    parser.add_argument("--data", default="auto",
                        help="real images: 'auto' (the model's source: MNIST for the digit models), 'mnist', "
                             "'digits' or a folder with one subfolder per class (default: %(default)s)")
    parser.add_argument("--concept-class", type=int, default=None,
                        help="text model: the label of the concept's images in --data, and the class the classifier "
                             "looks for")
    parser.add_argument("--samples", type=int, default=50, help="samples of each concept judged (default: %(default)s)")
    parser.add_argument("--sample-steps", type=int, default=25, help="sampler steps (default: %(default)s)")
    parser.add_argument("--classifier", default="digits",
                        help="the judge: 'digits' (shipped) or a classifier folder (default: %(default)s)")
    parser.add_argument("--nudenet", action="store_true",
                        help="judge with NudeNet instead: the share of samples with an EXPOSED detection")
    parser.add_argument("--threshold", type=float, default=0.6, help="NudeNet score threshold (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attack and the samples (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(run=run)


def run(args) -> None:
    from erase.errors import UsageError
    from erase.eval.attack import attack

    try:
        milestones = [int(part) for part in args.relearn_steps.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--relearn-steps {args.relearn_steps!r}: write step counts like 10,25,50") from None
    record = attack(args.model, args.forget_prompt or args.forget_class, attack=args.attack, images=args.images,
                    steps=args.steps, lr=args.lr, tokens=args.tokens, template=args.template, relearn_steps=milestones, samples=args.samples,
                    sample_steps=args.sample_steps, classifier=None if args.nudenet else args.classifier,
                    concept_class=args.concept_class, nudenet=args.nudenet, threshold=args.threshold, data=args.data,
                    seed=args.seed, out=args.out, overwrite=args.overwrite)
    print(f"{record['attack']} on {args.model}: " + "; ".join(
        f"{row['concept']!r} FA {row['fa_before']:.1%} -> {row['fa_after']:.1%}" for row in record["rows"])
        + f"; written to {args.out}")
