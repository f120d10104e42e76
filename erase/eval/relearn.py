"""Relearning probe: an erased class that returns after a few fine-tuning steps was hidden, not removed.

Fine-tunes the erased denoiser on a few real images of the forget class with the plain denoising loss (fixed seed)
and evaluates it (e.g. FA by sampling and classifying) at given step counts; the model's weights and the global
random state are put back afterwards. A model that never learned the class (RT) gives the reference curve.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from erase.objectives import denoising_losses

RELEARN_STEPS = (10, 25, 50)
RELEARN_IMAGES = 32
RELEARN_LR = 1e-4


def relearn_curve(adapter, images: torch.Tensor, labels: torch.Tensor, evaluate: Callable[[object], dict],
                  milestones: Sequence[int] = RELEARN_STEPS, lr: float = RELEARN_LR, seed: int = 0) -> list[dict]:
    """[{"step": k, **evaluate(adapter)}] after k full-batch Adam steps on (images, labels), for k in `milestones`
    (step 0 is not evaluated: the erased model's own scores are the caller's). `adapter.denoiser` is unchanged on
    return."""
    if not milestones or min(milestones) < 1:
        raise ValueError(f"milestones must be positive step counts, got {list(milestones)}")
    denoiser = adapter.denoiser
    saved = {name: value.detach().clone() for name, value in denoiser.state_dict().items()}
    was_training = denoiser.training
    device = next(denoiser.parameters()).device
    images, labels = images.to(device), labels.to(device)
    optimizer = torch.optim.Adam([p for p in denoiser.parameters() if p.requires_grad], lr=lr)
    rows = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for step in tqdm(range(1, max(milestones) + 1), desc="relearn", leave=False):
                denoiser.train()
                optimizer.zero_grad(set_to_none=True)
                denoising_losses(adapter, adapter.encode(images), labels).mean().backward()
                optimizer.step()
                if step in milestones:
                    denoiser.eval()
                    with torch.no_grad():
                        rows.append({"step": step, **evaluate(adapter)})
    finally:
        denoiser.load_state_dict(saved)
        denoiser.train(was_training)
    return rows
