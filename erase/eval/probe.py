"""A forgetting probe to run during erasure: FA of a fixed set of forget-class samples, every few steps.

Used through `erase unlearn --monitor-every N` (and by the benchmark) to find the first step at which FA drops
below a threshold. Samples are seeded per image, so the probe neither varies between calls nor touches the
training run's random stream.
"""

from __future__ import annotations

from typing import Sequence

from erase.eval.classifier import forgetting_metrics, predict_probabilities
from erase.sampling import class_jobs, generate


def forgetting_probe(classifier, forget_classes: Sequence[int], samples: int, num_inference_steps: int = 25,
                     seed: int = 0):
    """`evaluate(adapter) -> {"fa": ..., "forget_class_probability": ...}` for an engine.Monitor."""
    per_class = max(1, samples // len(forget_classes))

    def evaluate(adapter) -> dict:
        jobs = class_jobs(forget_classes, range(seed, seed + per_class), adapter.class_names)
        images = generate(adapter, jobs, num_inference_steps, description="probe")
        metrics = forgetting_metrics(predict_probabilities(classifier, images), [j.condition for j in jobs], forget_classes)
        return {"fa": metrics["forgetting_accuracy"], "forget_class_probability": metrics["forget_class_probability"]}

    return evaluate


def first_step_below(history: Sequence[dict], threshold: float, key: str = "fa") -> int | None:
    """The first probed step whose `key` is below `threshold`, or None if none was."""
    return next((row["step"] for row in history if row[key] < threshold), None)
