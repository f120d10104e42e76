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
