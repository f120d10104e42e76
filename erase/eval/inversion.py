"""Concept inversion (Pham et al., ICLR 2024): learn one new condition for an erased concept, everything else frozen.

Textual inversion (Gal et al., ICLR 2023) turned into an attack: if a new condition, optimised with the plain
denoising loss on a few real images of the erased concept, makes the frozen model draw the concept again, the
concept was hidden behind its old condition, not removed from the weights. On a class-conditional model the new
condition is a new class-embedding row: one vector per class table of the denoiser (the CFG UNet has one table,
DiT one per block), standing in for the erased class's row while the attack samples that class. The model's weights
are never written: the tables are wrapped for the duration of `overridden_class` and put back afterwards.

Budget conventions: CI trains on 25 images per concept with textual inversion's base learning rate 5e-3 (scaled by
its batch of 16 to 0.08, constant, 5000 steps at 512 px). Here the batch is all K images at once and Adam's step
size is the learning rate itself, so the defaults below take CI's K and the scaled rate, with a step budget sized to
the 16-px digit model (where the loss plateaus well before it; see docs/attacks.md).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from erase.objectives import denoising_losses

INVERSION_IMAGES = 25  # CI: 25 training images per concept
INVERSION_LR = 0.08  # CI: textual inversion's 5e-3, scaled by its batch of 16 (--scale_lr)
INVERSION_STEPS = 200


class RowOverride(nn.Module):
    """An embedding table whose row `row` reads `vector` instead; the table itself is left untouched."""

    def __init__(self, table: nn.Embedding, row: int, vector: torch.Tensor):
        super().__init__()
        self.table, self.row, self.vector = table, row, vector

    @property
    def weight(self) -> torch.Tensor:  # code that reads `.weight` (e.g. a dtype lookup) sees the real table
        return self.table.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.table(ids)
        return torch.where((ids == self.row).unsqueeze(-1), self.vector.to(out.dtype), out)


def class_tables(adapter) -> list[tuple[nn.Module, str, nn.Embedding]]:
    """(parent module, attribute, table) for every class-embedding table of a class-conditional denoiser: the
    embeddings with one row per class plus the null row."""
    rows = adapter.num_classes + 1
    found = []
    for parent in adapter.denoiser.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Embedding) and child.num_embeddings == rows:
                found.append((parent, name, child))
    if not found:
        raise ValueError(f"no class-embedding table with {rows} rows in this {type(adapter.denoiser).__name__}")
    return found


@contextmanager
def overridden_class(adapter, class_id: int, vectors: list[torch.Tensor]) -> Iterator[None]:
    """Within the block, class `class_id` is conditioned on `vectors` (one per table of `class_tables`)."""
    tables = class_tables(adapter)
    if len(vectors) != len(tables):
        raise ValueError(f"{len(vectors)} vectors for {len(tables)} class tables")
    for (parent, name, table), vector in zip(tables, vectors):
        setattr(parent, name, RowOverride(table, class_id, vector))
    try:
        yield
    finally:
        for parent, name, table in tables:
            setattr(parent, name, table)


def optimise_frozen(adapter, vectors: list[torch.Tensor], condition, x0: torch.Tensor, steps: int, lr: float,
                    seed: int, description: str) -> dict:
    """Full-batch Adam on `vectors` alone for the mean denoising loss of `x0` under `condition()` (called each step,
    so a condition built from the vectors stays in the graph), with the denoiser frozen and in eval mode (no dropout;
    DiT's label dropout is off) and the global random state forked at `seed`. The caller wraps this in what makes
    the vectors part of the model. Returns the mean loss over the first and the last tenth of the steps (each step
    draws its own noise); requires_grad flags and the training mode are put back."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    denoiser = adapter.denoiser
    device = x0.device
    flags = [p.requires_grad for p in denoiser.parameters()]
    was_training = denoiser.training
    optimizer = torch.optim.Adam(vectors, lr=lr)
    losses = []
    try:
        denoiser.eval()
        denoiser.requires_grad_(False)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for _ in tqdm(range(steps), desc=description, leave=False):
                optimizer.zero_grad(set_to_none=True)
                loss = denoising_losses(adapter, x0, condition()).mean()
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
    finally:
        for parameter, flag in zip(denoiser.parameters(), flags):
            parameter.requires_grad_(flag)
        denoiser.train(was_training)
    curve = torch.stack(losses)
    window = max(1, len(curve) // 10)
    return {"loss_start": float(curve[:window].mean()), "loss_end": float(curve[-window:].mean())}


def invert_class(adapter, images: torch.Tensor, class_id: int, steps: int = INVERSION_STEPS, lr: float = INVERSION_LR,
                 seed: int = 0) -> dict:
    """Learn class `class_id`'s condition from `images` ((K, C, H, W) in [-1, 1]) on the frozen model
    (`optimise_frozen`), starting from the model's own row for the class (CI starts from the concept's word).
    Returns {"vectors": [...], "loss_start", "loss_end"}; the model's weights and the global random state are
    unchanged."""
    device = next(adapter.denoiser.parameters()).device
    vectors = [table.weight[class_id].detach().clone().float().requires_grad_(True)
               for _, _, table in class_tables(adapter)]
    x0 = adapter.encode(images.to(device))
    labels = torch.full((len(x0),), class_id, dtype=torch.long, device=device)
    with overridden_class(adapter, class_id, vectors):
        losses = optimise_frozen(adapter, vectors, lambda: labels, x0, steps, lr, seed, "concept inversion")
    return {"vectors": [v.detach() for v in vectors], **losses}
