"""Generation for evaluation: one job per image (condition, seed, guidance), each image seeded on its own.

An image depends only on its model, condition, seed, guidance and step count, not on the batch it was drawn in,
so `erase sample`, `erase grid` and the demo show the same picture for the same (condition, seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from erase.prompts import PromptRow


@dataclass
class Job:
    condition: object  # a class id or a prompt
    seed: int
    guidance_scale: float | None = None  # None = the model's own scale
    record: dict = field(default_factory=dict)  # what index.json stores for this image


def class_jobs(classes: Sequence[int], seeds: Sequence[int], class_names: Sequence[str], guidance_scale=None) -> list[Job]:
    """Every class with every seed, class-major."""
    return [
        Job(c, s, guidance_scale, {"condition": c, "class_name": class_names[c], "seed": s})
        for c in classes for s in seeds
    ]


def prompt_jobs(rows: Sequence[PromptRow], n_per_prompt: int, seed: int, guidance_scale=None) -> list[Job]:
    """n images per prompt, image k seeded evaluation_seed + seed + k (evaluation_seed 0 where the row has none);
    the row's evaluation_guidance wins over `guidance_scale`."""
    jobs = []
    for row in rows:
        base = (row.seed or 0) + seed
        scale = row.guidance_scale if row.guidance_scale is not None else guidance_scale
        for k in range(n_per_prompt):
            jobs.append(Job(row.prompt, base + k, scale,
                            {"condition": row.prompt, "case_number": row.case_number, "seed": base + k}))
    return jobs


def generate(adapter, jobs: Sequence[Job], num_inference_steps: int | None = None, batch_size: int = 64,
             description: str = "sample") -> torch.Tensor:
    """Images for `jobs` in order, floats in [0, 1]; batches never mix guidance scales."""
    device = next(adapter.denoiser.parameters()).device
    images = []
    progress = tqdm(total=len(jobs), desc=description, leave=False)
    start = 0
    while start < len(jobs):
        end = start + 1
        while end < len(jobs) and end - start < batch_size and jobs[end].guidance_scale == jobs[start].guidance_scale:
            end += 1
        batch = jobs[start:end]
        generators = [torch.Generator(device).manual_seed(job.seed) for job in batch]
        images.append(adapter.sample([job.condition for job in batch], num_inference_steps, batch[0].guidance_scale,
                                     generators).cpu())
        progress.update(len(batch))
        start = end
    progress.close()
    return torch.cat(images)
