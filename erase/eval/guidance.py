"""Pick a class-conditional model's guidance scale by the classifier accuracy of its samples.

A small CFG model over-guided draws garbage (16 px digits fall apart at high scales), and under-guided it draws
the wrong digit; the scale that maximises mean per-class accuracy is the one every command should use.
"""

from __future__ import annotations

from typing import Sequence

from erase.eval.class_scores import sample_classes
from erase.eval.classifier import forgetting_metrics, predict_probabilities


def guidance_sweep(adapter, classifier, scales: Sequence[float], per_class: int, seed: int = 0,
                   num_inference_steps: int = 50) -> dict:
    """Accuracy per class and mean at every scale, on the same seeds; `best` = highest mean (smallest scale on ties)."""
    rows = []
    for scale in scales:
        samples = sample_classes(adapter, per_class, seed, num_inference_steps, f"guidance {scale:g}", float(scale))
        metrics = forgetting_metrics(predict_probabilities(classifier, samples.images), samples.conditions, [])
        rows.append({"scale": float(scale), "accuracy_mean": metrics["remaining_accuracy_mean"],
                     "accuracy_per_class": metrics["remaining_accuracy"]})
    best = max(rows, key=lambda row: (row["accuracy_mean"], -row["scale"]))
    return {"best": best["scale"], "rows": rows, "per_class": per_class, "seed": seed,
            "num_inference_steps": num_inference_steps,
            "sampler": adapter.training_record()["sampler"]}


def styled_guidance_sweep(adapter, style_judge, digit_judge, scales: Sequence[float], per_prompt: int, seed: int = 0,
                          num_inference_steps: int = 50) -> dict:
    """A text model of the styled digits: at every scale, `per_prompt` images of every digit x style in every
    template (first spellings), judged by both judges; `best` = the highest mean of style and digit agreement
    (smallest scale on ties)."""
    from erase.eval.concepts import concept_scores
    from erase.prompts import PromptRow
    from erase.sampling import generate, prompt_jobs
    from erase.styled import TEMPLATES, evaluation_prompts

    prompts = evaluation_prompts(templates=tuple(range(len(TEMPLATES))))
    rows = []
    for scale in scales:
        jobs = prompt_jobs([PromptRow(p, None, None, str(i)) for i, p in enumerate(prompts)], per_prompt, seed,
                           float(scale))
        images = generate(adapter, jobs, num_inference_steps, description=f"guidance {scale:g}")
        scores = concept_scores(predict_probabilities(style_judge, images).argmax(-1),
                                predict_probabilities(digit_judge, images).argmax(-1), [j.condition for j in jobs], None)
        style = sum(scores["style_accuracy"].values()) / len(scores["style_accuracy"])
        digit = sum(scores["digit_accuracy"].values()) / len(scores["digit_accuracy"])
        rows.append({"scale": float(scale), "accuracy_mean": (style + digit) / 2, "style_agreement": style,
                     "digit_agreement": digit, "style_accuracy": scores["style_accuracy"],
                     "digit_accuracy": scores["digit_accuracy"]})
    best = max(rows, key=lambda row: (row["accuracy_mean"], -row["scale"]))
    return {"best": best["scale"], "rows": rows, "per_prompt": per_prompt, "prompts": len(prompts), "seed": seed,
            "num_inference_steps": num_inference_steps, "sampler": adapter.training_record()["sampler"]}
