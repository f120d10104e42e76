"""`erase.attack`: try to bring an erased class back, and measure whether it came back.

An erasure is worth what survives an attacker. Each attack runs against the frozen erased model and ends the way
every claim here ends, by sampling and classifying: FA of the attacked class's samples before and after the attack.
- "inversion" (erase/eval/inversion.py, Pham et al. 2024): a new condition vector learned on K real images.
- "relearn" (erase/eval/relearn.py): a few fine-tuning steps on K real images, FA after each milestone.
The same attack on the model that never learned the class (RT) is the floor an erasure can reach, and on the base
model the ceiling; `erase benchmark` runs both. The attacked model's weights are digested before and after: an
attack that changed them is an error, never a result.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from erase.errors import OptionError, option

ATTACKS = ("inversion", "relearn")
ATTACK_RANGES = {"images": "[1, inf)", "steps": "[1, inf)", "lr": "(0, inf)", "samples": "[1, inf)",
                 "sample_steps": "[1, inf)", "seed": "[0, 4294967295]"}


def weights_digest(module) -> str:
    from erase.eval.fid import module_digest

    return module_digest(module)


def concept_images(adapter, data: str, class_id: int, count: int):
    """`count` real images of class `class_id` from `data` ('auto': the model's data source), in [-1, 1]: the
    dataset's first ones, as the relearning probe takes them."""
    from erase.data import load_dataset
    from erase.errors import DataError

    source = adapter.default_data if data == "auto" else str(data)
    if source == "generated":
        raise DataError(f"this {adapter.backbone} model has no real-image source; pass {option('--data', 'data')} "
                        "'mnist', 'digits' or a folder with one subfolder per class")
    channels, _, resolution = adapter.image_shape
    dataset = load_dataset(source, resolution, channels)
    images = dataset.images[dataset.labels == class_id][:count]
    if len(images) == 0:
        raise DataError(f"{option('--data', 'data')} {source!r} has no images of class {class_id}")
    return images, source


def attack(
    model,
    forget=None,
    *,
    attack: str = "inversion",
    images: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
    relearn_steps: Sequence[int] = (10, 25, 50),
    samples: int = 50,
    sample_steps: int = 25,
    classifier: str = "digits",
    data: str = "auto",
    seed: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Attack each class in `forget` (default: what the model's record says it erased) on `model` (a folder or a
    diffusers object; never modified) and return the record `erase attack --out` writes.

    attack: "inversion" (a new class-embedding vector learned on `images` real images for `steps` Adam steps at
        `lr`; defaults: erase/eval/inversion.py, from Pham et al.) or "relearn" (fine-tuning on `images` real images,
        FA after each of `relearn_steps`, at `lr`; defaults: erase/eval/relearn.py).
    samples / sample_steps: images per class sampled (seeds `seed` .. `seed + samples - 1`, the model's guidance)
        and sampler steps, scored with `classifier` before and after the attack (FA: share classified as the class).
    data: real images of the class: 'auto' (the model's source, MNIST for the digit models), 'mnist', 'digits' or an
        image folder with one subfolder per class.
    """
    import torch

    from erase.api import _as_list, _class_ids
    from erase.config import check_ranges
    from erase.errors import ModelError
    from erase.eval.classifier import load_classifier
    from erase.eval.inversion import INVERSION_IMAGES, INVERSION_LR, INVERSION_STEPS
    from erase.eval.relearn import RELEARN_IMAGES, RELEARN_LR
    from erase.models import open_model
    from erase.record import as_json, check_output_file, environment, write_json

    if attack not in ATTACKS:
        raise OptionError(f"{option('--attack', 'attack')} {attack!r} is not one of {', '.join(ATTACKS)}")
    given = {k: v for k, v in locals().items() if k in ATTACK_RANGES and v is not None}
    check_ranges(given, ATTACK_RANGES)
    milestones = sorted({int(s) for s in relearn_steps})
    if attack == "relearn" and (not milestones or milestones[0] < 1):
        raise OptionError(f"{option('--relearn-steps', 'relearn_steps')}: positive step counts like 10,25,50")
    if out is not None:
        out = check_output_file(out, overwrite)
    opened = open_model(model, train_params=None)
    adapter = opened.adapter
    if adapter.takes_prompts or not adapter.conditional or not getattr(adapter, "generative", True):
        raise ModelError(f"erase attack runs on class-conditional diffusion models (cfg_unet, dit); this is a "
                         f"{adapter.backbone} model")
    forget_ids = _class_ids(_as_list(forget), option("--forget-class", "forget")) if forget is not None else \
        list(adapter.info.get("erased", {}).get("forget_classes", []))
    if not forget_ids:
        raise OptionError(f"name the class to attack with {option('--forget-class', 'forget')}: this model records "
                          "no erased class")
    adapter.check_class_ids(forget_ids)
    if attack == "inversion":
        budget = {"images": images or INVERSION_IMAGES, "steps": steps or INVERSION_STEPS, "lr": lr or INVERSION_LR}
    else:
        budget = {"images": images or RELEARN_IMAGES, "steps": milestones, "lr": lr or RELEARN_LR}
    digest = weights_digest(adapter.denoiser)
    started = time.time()
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is not the attack's business
        judge = load_classifier(classifier)  # (building the network draws its initial weights)
        rows = [attack_class(adapter, class_id, attack, budget, milestones, judge, data, samples, sample_steps, seed)
                for class_id in forget_ids]
    if weights_digest(adapter.denoiser) != digest:
        raise RuntimeError("the attack changed the attacked model's weights; this is a bug in erase, please report it")
    record = as_json({
        "command": "attack", "attack": attack, "model": opened.description, "backbone": adapter.backbone,
        "erased": adapter.info.get("erased"), "forget_classes": forget_ids, "budget": budget, "data": data,
        "samples": samples, "sample_steps": sample_steps, "seed": seed, "classifier": str(classifier),
        "weights_digest": digest, "weights_unchanged": True, "rows": rows, "seconds": time.time() - started,
        "environment": environment(),
    })
    if out is not None:
        write_json(out, record)
    return record


def attack_class(adapter, class_id: int, attack: str, budget: dict, milestones: list[int], judge, data: str,
                 samples: int, sample_steps: int, seed: int) -> dict:
    """One class's row: FA of its samples before and after the attack."""
    import torch

    from erase.eval.inversion import invert_class, overridden_class
    from erase.eval.probe import forgetting_probe
    from erase.eval.relearn import relearn_curve

    real, source = concept_images(adapter, data, class_id, budget["images"])
    probe = forgetting_probe(judge, [class_id], samples, sample_steps, seed)
    row = {"class": class_id, "images": len(real), "data": source, "fa_before": probe(adapter)["fa"]}
    if attack == "inversion":
        learned = invert_class(adapter, real, class_id, budget["steps"], budget["lr"], seed)
        with overridden_class(adapter, class_id, learned["vectors"]):
            row["fa_after"] = probe(adapter)["fa"]
        row.update(loss_start=learned["loss_start"], loss_end=learned["loss_end"])
    else:
        labels = torch.full((len(real),), class_id, dtype=torch.long)
        curve = relearn_curve(adapter, real, labels, lambda a: {"fa": probe(a)["fa"]}, milestones, lr=budget["lr"],
                              seed=seed)
        row.update(fa_after=curve[-1]["fa"], curve=curve)
    print(f"{attack} on class {class_id}: FA {row['fa_before']:.1%} -> {row['fa_after']:.1%}")
    return row
