"""Attacks on text-to-image models that try to bring an erased prompt's concept back, everything but new tokens frozen.

- Concept inversion (Pham et al., ICLR 2024): textual inversion (Gal et al., ICLR 2023) of one new token on K real
  images of the concept, in the prompt "a photo of {token}"; the samples of that prompt are judged.
- Adversarial prompt (UnlearnDiffAtk's idea, Zhang et al. 2024): `count` tokens put in front of the erased prompt and
  optimised with the same denoising loss on the concept's images, each step's forward pass using the nearest real
  vocabulary tokens (projected, straight-through), so the result is a sequence of real tokens; its samples are judged
  on exactly those ids, and it is decoded as text for the record (which says whether the text tokenizes back to them).
Both optimise only rows of the text encoder's input-embedding table, read through `TokenOverride` while they run;
the text encoder, tokenizer and denoiser are never written. They apply to the families with one text encoder
(`token_encoder()`: Stable Diffusion 1.x / 2.x); the multi-encoder families (SDXL, SD 3, Flux) are refused by name.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from erase.eval.inversion import optimise_frozen

INVERSION_TEMPLATE = "a photo of {}"  # CI's object template
ADVERSARIAL_TOKENS = 5  # UnlearnDiffAtk as recalled from its paper (not checked here): 5 tokens in front
ADVERSARIAL_STEPS = 40  # ... 40 attack iterations
ADVERSARIAL_LR = 0.01  # ... learning rate 0.01


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


def token_ids(tokenizer, before: str, extra: list[int], after: str = "") -> torch.Tensor:
    """(1, max_length) ids of `before`, then the `extra` ids, then `after`, between the start and end tokens and
    padded as the pipeline pads."""
    words = [tokenizer(text).input_ids for text in (before, after)]
    start, end = words[0][0], words[0][-1]
    ids = [start, *words[0][1:-1], *extra, *words[1][1:-1]][:tokenizer.model_max_length - 1] + [end]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
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


def learn_tokens(adapter, images: torch.Tensor, before: str, count: int, after: str, init: torch.Tensor, steps: int,
                 lr: float, seed: int, project: bool) -> dict:
    """Optimise `count` new tokens placed between the texts `before` and `after` with the mean denoising loss on `images` ((K, C, H, W) in [-1, 1]), everything else frozen. Returns the vectors, the ids they
    take in `token_ids`, the projected vocabulary ids and the loss at the start and the end (first and last tenth)."""
    text_encoder, tokenizer = adapter.token_encoder()
    device = next(adapter.denoiser.parameters()).device
    first = text_encoder.get_input_embeddings().num_embeddings
    ids = token_ids(tokenizer, before, list(range(first, first + count)), after).to(text_encoder.device)
    vectors = init.detach().float().clone().expand(count, -1).clone().requires_grad_(True)
    x0 = adapter.encode(images.to(device))

    def condition():  # through the text encoder, so the loss reaches the token vectors
        return {"encoder_hidden_states": text_encoder(ids)[0].float().to(device).expand(len(x0), -1, -1)}

    with overridden_tokens(text_encoder, vectors, project) as override:
        losses = optimise_frozen(adapter, [vectors], condition, x0, steps, lr, seed,
                                 "adversarial prompt" if project else "concept inversion")
        nearest = override.nearest()
        with torch.no_grad():
            hidden = text_encoder(ids)[0].float()
    return {"vectors": vectors.detach(), "nearest": nearest.tolist(), "hidden": hidden, **losses}


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
    before, after = (part.strip() for part in template.split("{}"))
    result = learn_tokens(adapter, images, before, 1, after, prompt_embedding_init(adapter, prompt), steps, lr, seed,
                          project=False)
    return {**result, "embedded": {"encoder_hidden_states": result["hidden"]}, "template": template}


def adversarial_prompt(adapter, images, prompt: str, steps: int = ADVERSARIAL_STEPS, lr: float = ADVERSARIAL_LR,
                       count: int = ADVERSARIAL_TOKENS, seed: int = 0) -> dict:
    """`count` vocabulary tokens in front of `prompt`, chosen by projected optimisation on `images`; returns
    learn_tokens' dict plus "embedded" (the text encoder's output for exactly those token ids, the condition to
    sample), "prompt" (the ids decoded as text) and "round_trip" (whether tokenizing that text gives the same ids:
    a BPE tokenizer may merge decoded tokens differently, so the typed prompt can differ from the attack's)."""
    _, tokenizer = adapter.token_encoder()
    result = learn_tokens(adapter, images, "", count, prompt, prompt_embedding_init(adapter, prompt), steps, lr, seed,
                          project=True)
    words = tokenizer.decode(result["nearest"]).strip()
    text = f"{words} {prompt}".strip()
    exact = token_ids(tokenizer, "", result["nearest"], prompt)
    typed = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    return {**result, "embedded": {"encoder_hidden_states": result["hidden"]}, "prompt": text,
            "round_trip": typed == exact[0].tolist()}
