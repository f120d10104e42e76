"""Attacks on text-to-image models that try to bring an erased prompt's concept back, everything but new tokens frozen.

- Concept inversion (Pham et al., ICLR 2024): textual inversion (Gal et al., ICLR 2023) of one new token on K real
  images of the concept, in the prompt "a photo of {token}"; the samples of that prompt are judged.
- Adversarial prompt (UnlearnDiffAtk's idea, Zhang et al. 2024): `count` tokens put in front of the erased prompt and
  optimised with the same denoising loss on the concept's images, each step's forward pass using the nearest real
  vocabulary tokens (projected, straight-through), so the result is a prompt anyone can type; it is decoded and its
  samples are judged.
Both optimise only rows of the text encoder's input-embedding table, read through `TokenOverride` while they run;
the text encoder, tokenizer and denoiser are never written. They apply to the families with one text encoder
(`token_encoder()`: Stable Diffusion 1.x / 2.x); the multi-encoder families (SDXL, SD 3, Flux) are refused by name.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from erase.objectives import denoising_losses

INVERSION_TEMPLATE = "a photo of {}"  # CI's object template
ADVERSARIAL_TOKENS = 5  # UnlearnDiffAtk: 5 adversarial tokens in front of the prompt
ADVERSARIAL_STEPS = 40  # UnlearnDiffAtk: 40 attack iterations
ADVERSARIAL_LR = 0.01  # UnlearnDiffAtk: attack learning rate


class TokenOverride(nn.Module):
    """A token-embedding table in which the ids `first`, `first + 1`, ... (past the vocabulary) read `vectors`;
    with `project`, each vector is replaced in the forward pass by its nearest vocabulary row (cosine), the
    gradient passing straight through to the vector."""

    def __init__(self, table: nn.Embedding, vectors: torch.Tensor, project: bool = False):
        super().__init__()
        self.table, self.vectors, self.project, self.first = table, vectors, project, table.num_embeddings

    @property
    def weight(self) -> torch.Tensor:
        return self.table.weight

    def nearest(self) -> torch.Tensor:
        """The vocabulary ids nearest (cosine) to each vector."""
        table = nn.functional.normalize(self.table.weight.detach().float(), dim=-1)
        return (nn.functional.normalize(self.vectors.detach().float(), dim=-1) @ table.T).argmax(-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.table(ids.clamp(max=self.first - 1))
        vectors = self.vectors.to(out.dtype)
        if self.project:
            vectors = vectors + (self.table.weight[self.nearest()].to(out.dtype) - vectors).detach()
        new = ids - self.first
        picked = vectors[new.clamp(min=0, max=len(vectors) - 1)]
        return torch.where((new >= 0).unsqueeze(-1), picked, out)


def token_ids(tokenizer, text: str, extra: list[int], at_start: bool) -> torch.Tensor:
    """(1, max_length) ids of `text` with the `extra` ids right after the start token or right before the end token,
    padded as the pipeline pads."""
    ids = tokenizer(text, truncation=True, max_length=tokenizer.model_max_length - len(extra)).input_ids
    ids = [ids[0], *extra, *ids[1:]] if at_start else [*ids[:-1], *extra, ids[-1]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[-1]
    return torch.tensor([ids + [pad] * (tokenizer.model_max_length - len(ids))])


@contextmanager
def overridden_tokens(text_encoder, vectors: torch.Tensor, project: bool = False) -> Iterator[TokenOverride]:
    table = text_encoder.get_input_embeddings()
    override = TokenOverride(table, vectors, project)
    text_encoder.set_input_embeddings(override)
    try:
        yield override
    finally:
        text_encoder.set_input_embeddings(table)


def learn_tokens(adapter, images: torch.Tensor, text: str, count: int, at_start: bool, init: torch.Tensor, steps: int,
                 lr: float, seed: int, project: bool) -> dict:
    """Optimise `count` new tokens placed in `text` (after the start token, or before the end token) with the mean
    denoising loss on `images` ((K, C, H, W) in [-1, 1]), everything else frozen. Returns the vectors, the ids they
    take in `token_ids`, the projected vocabulary ids and the loss at the start and the end (first and last tenth)."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    text_encoder, tokenizer = adapter.token_encoder()
    denoiser = adapter.denoiser
    device = next(denoiser.parameters()).device
    first = text_encoder.get_input_embeddings().num_embeddings
    extra = list(range(first, first + count))
    ids = token_ids(tokenizer, text, extra, at_start).to(text_encoder.device)
    vectors = init.detach().float().clone().expand(count, -1).clone().requires_grad_(True)
    flags = [p.requires_grad for p in denoiser.parameters()]
    was_training = denoiser.training
    x0 = adapter.encode(images.to(device))
    optimizer = torch.optim.Adam([vectors], lr=lr)
    losses = []
    try:
        denoiser.eval()
        denoiser.requires_grad_(False)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                overridden_tokens(text_encoder, vectors, project) as override:
            torch.manual_seed(seed)
            for _ in tqdm(range(steps), desc="adversarial prompt" if project else "concept inversion", leave=False):
                optimizer.zero_grad(set_to_none=True)
                hidden = text_encoder(ids)[0].float().to(device)
                condition = {"encoder_hidden_states": hidden.expand(len(x0), -1, -1)}
                loss = denoising_losses(adapter, x0, condition).mean()
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
            nearest = override.nearest()
            with torch.no_grad():
                hidden = text_encoder(ids)[0].float()
    finally:
        for parameter, flag in zip(denoiser.parameters(), flags):
            parameter.requires_grad_(flag)
        denoiser.train(was_training)
    curve = torch.stack(losses)
    window = max(1, len(curve) // 10)
    return {"vectors": vectors.detach(), "nearest": nearest.tolist(), "hidden": hidden,
            "loss_start": float(curve[:window].mean()), "loss_end": float(curve[-window:].mean())}


def prompt_embedding_init(adapter, text: str) -> torch.Tensor:
    """The mean input embedding of `text`'s tokens (CI starts from the concept's word)."""
    text_encoder, tokenizer = adapter.token_encoder()
    ids = tokenizer(text).input_ids[1:-1] or tokenizer("a").input_ids[1:-1]
    table = text_encoder.get_input_embeddings().weight
    return table[torch.tensor(ids, device=table.device)].detach().float().mean(0)


def invert_prompt(adapter, images, prompt: str, steps: int, lr: float, seed: int = 0,
                  template: str = INVERSION_TEMPLATE) -> dict:
    """Concept inversion: one new token in `template`, learned on `images`, starting from `prompt`'s mean token
    embedding. Returns learn_tokens' dict plus the condition to sample ("embedded": the text encoder's output)."""
    prefix = template.split("{}")[0].strip()
    result = learn_tokens(adapter, images, prefix, 1, False, prompt_embedding_init(adapter, prompt), steps, lr, seed,
                          project=False)
    return {**result, "embedded": {"encoder_hidden_states": result["hidden"]}, "template": template}


def adversarial_prompt(adapter, images, prompt: str, steps: int = ADVERSARIAL_STEPS, lr: float = ADVERSARIAL_LR,
                       count: int = ADVERSARIAL_TOKENS, seed: int = 0) -> dict:
    """`count` vocabulary tokens in front of `prompt`, chosen by projected optimisation on `images`; returns
    learn_tokens' dict plus "prompt", the adversarial prompt as text."""
    _, tokenizer = adapter.token_encoder()
    result = learn_tokens(adapter, images, prompt, count, True, prompt_embedding_init(adapter, prompt), steps, lr, seed,
                          project=True)
    words = tokenizer.decode(result["nearest"]).strip()
    return {**result, "prompt": f"{words} {prompt}".strip()}
