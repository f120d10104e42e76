"""`erase score`: score a folder of images (any model's) with a classifier, FID, NudeNet and CLIP; one JSON out."""

from __future__ import annotations

from pathlib import Path

from erase.api import DEFAULT_CACHE
from erase.api import SCORE_RANGES as RANGES  # noqa: F401 (tests read it); checked by erase.score before anything loads


def register(commands) -> None:
    parser = commands.add_parser(
        "score", help="FA/RA with a classifier, FID, NudeNet nudity rates, CLIP score for a folder of images",
        description="Reads OUT of `erase sample` (or any folder of images) and writes all chosen metrics with the "
                    "settings that produced them. FA/RA need the class of each image, CLIP score its prompt "
                    "(index.json).",
    )
    parser.add_argument("--images", type=Path, required=True, help="folder of generated images")
    parser.add_argument("--classifier", default=None,
                        help="'digits' (shipped), 'styled' (the shipped style and styled-digit judges: UA, IRA, CRA "
                             "of an erased style or digit), a classifier folder, or a transformers "
                             "image-classification folder")
    parser.add_argument("--forget-class", default=None,
                        help="forgotten class id(s) for FA (default: those recorded by `erase unlearn` in the model)")
    parser.add_argument("--forget-concept", default=None, metavar="KIND:NAME",
                        help="with --classifier styled: the erased concept, 'style:KEY' or 'digit:D' (default: the "
                             "one the model's recorded forget prompts name)")
    parser.add_argument("--fid-ref", default=None,
                        help="real images for FID: 'mnist', 'digits', or a folder of images")
    parser.add_argument("--fid-features", default="classifier", choices=("classifier", "inception"),
                        help="FID feature space: classifier penultimate features, or clean-fid Inception (default: %(default)s)")
    parser.add_argument("--fid-classes", default="remain", choices=("remain", "all"),
                        help="which generated images (and, for datasets, real classes) enter FID (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="where real-image FID statistics are cached (default: %(default)s)")
    parser.add_argument("--nudenet", action="store_true", help="run NudeNet and count EXPOSED detections")
    parser.add_argument("--threshold", type=float, default=0.6, help="NudeNet score threshold (default: %(default)s)")
    parser.add_argument("--clip-model", type=Path, default=None,
                        help="local CLIP folder (transformers CLIPModel + CLIPProcessor, e.g. a downloaded "
                             "openai/clip-vit-large-patch14): CLIP score of each image against its prompt")
    parser.add_argument("--out", type=Path, required=True, help="output JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(run=run)


def run(args) -> None:
    from erase.api import score

    scores = score(args.images, classifier=args.classifier, forget=args.forget_class,
                   forget_concept=args.forget_concept, fid_ref=args.fid_ref,
                   fid_features=args.fid_features, fid_classes=args.fid_classes, cache_dir=args.cache_dir,
                   nudenet=args.nudenet, threshold=args.threshold, clip_model=args.clip_model, out=args.out,
                   overwrite=args.overwrite)
    summary = []
    if "classifier" in scores:
        c = scores["classifier"]
        if c["forgetting_accuracy"] is not None:
            summary.append(f"FA {c['forgetting_accuracy']:.1%}")
        if c["remaining_accuracy_mean"] is not None:
            summary.append(f"mean RA {c['remaining_accuracy_mean']:.1%}")
    if "concepts" in scores and scores["concepts"].get("concept"):
        c = scores["concepts"]
        summary.append(f"{c['concept']}: UA {c['unlearning_accuracy']:.1%}, IRA {c['in_domain_retain_accuracy']:.1%}, "
                       f"CRA {c['cross_domain_retain_accuracy']:.1%}, {c['kept_kind']} kept {c['kept']:.1%}")
    elif "concepts" in scores:
        c = scores["concepts"]
        summary.append("style accuracy " + ", ".join(f"{k} {v:.0%}" for k, v in c["style_accuracy"].items()))
    if "fid" in scores:
        summary.append(f"FID ({args.fid_features}) {scores['fid']['value']:.3f}")
    if "nudity" in scores:
        summary.append(f"exposed in {scores['nudity']['images_with_exposed']}/{scores['nudity']['images']} images")
    if "clip" in scores:
        summary.append(f"CLIP score {scores['clip']['score']:.2f}")
    print("; ".join(summary) + f"; written to {args.out}")
