"""Prompt conditioning shared by the text-to-image adapters (Stable Diffusion 1.x/2.x, SDXL, SD 3.x, Flux.1).

Prompts are registered once (`register_prompts`) and their frozen text-encoder outputs kept in a table, so a
condition is a LongTensor of prompt ids and data batches stay plain tensors. Id 0 is the empty prompt, the null
condition of classifier-free guidance. A family's text encoders give several tensors per prompt (SDXL: token
embeddings and a pooled embedding; SD 3: the same from three encoders; Flux: T5 tokens and a pooled CLIP vector),
so an embedded condition is a dict of tensors with the batch first; `encode_prompts` is each family's one method.

`--train-params` means the same on every family: `full`; `xattn`, the attention that reads the text (cross-attention
`attn2` in UNets, as ESD-x; the joint text-image attention of MMDiT blocks in SD 3 and Flux), which the adapter names
with `text_attention(name)`; `noxattn`, everything else but the time embedding and the output layers (ESD-u).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from erase.errors import OptionError, option

TRAIN_PARAMS = ("full", "xattn", "noxattn")


class PromptConditioning:
    """Mixin for adapters whose conditions are prompts; the adapter implements `encode_prompts` and
    `text_attention` and calls `init_prompts()` once its text encoders are set."""

    conditional = True
    takes_prompts = True
    output_layers: tuple[str, ...] = ()  # name prefixes ESD-u keeps frozen besides the text attention

    def init_prompts(self) -> None:
        self.prompts: list[str] = []
        self.prompt_ids: dict[str, int] = {}
        self.embeddings: dict[str, torch.Tensor] | None = None
        self.register_prompts([""])

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Frozen text-encoder outputs for `prompts`, each tensor (N, ...), as the family's pipeline conditions its
        denoiser."""
        raise NotImplementedError

    def text_attention(self, name: str) -> bool:
        """Whether the denoiser parameter `name` belongs to the attention that reads the text."""
        raise NotImplementedError

    @torch.no_grad()
    def register_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Ids of `prompts` in the embedding table, encoding the ones not seen before."""
        new = [p for p in dict.fromkeys(prompts) if p not in self.prompt_ids]
        if new:
            embedded = {k: v.float() if v.is_floating_point() else v  # fp32 even from a bf16 encoder
                        for k, v in self.encode_prompts(new).items()}
            if self.embeddings is not None:
                embedded = {k: torch.cat([self.embeddings[k], v.to(self.embeddings[k].device)])
                            for k, v in embedded.items()}
            self.embeddings = embedded
            for prompt in new:
                self.prompt_ids[prompt] = len(self.prompts)
                self.prompts.append(prompt)
        return torch.tensor([self.prompt_ids[p] for p in prompts], dtype=torch.long)

    @property
    def num_classes(self) -> int:
        return len(self.prompts)

    @property
    def class_names(self) -> list[str]:
        return list(self.prompts)

    def move_embeddings(self, device) -> None:
        self.embeddings = {k: v.to(device) for k, v in self.embeddings.items()}

    def embed(self, condition) -> dict[str, torch.Tensor]:
        """Prompt ids -> {name: (N, ...)} embeddings; embedded conditions pass through."""
        if isinstance(condition, dict):
            return condition
        index = condition.to(next(iter(self.embeddings.values())).device)
        return {k: v[index] for k, v in self.embeddings.items()}

    def join_conditions(self, first: dict, second: dict) -> dict:
        return {k: torch.cat([first[k], second[k]]) for k in first}

    def token_encoder(self):
        """(text encoder, tokenizer) of a family with one text encoder (Stable Diffusion 1.x / 2.x)."""
        from erase.errors import ModelError

        names = getattr(self, "text_encoder_names", ())
        if tuple(names) != ("text_encoder",):
            raise ModelError(f"prompt attacks learn tokens of a single CLIP text encoder (Stable Diffusion 1.x / 2.x); "
                             f"this {self.backbone} model has {list(names)}")
        return self.text_encoder, self.tokenizer

    @contextmanager
    def temporary_prompt(self, name: str, embedded: dict[str, torch.Tensor]) -> Iterator[int]:
        """Within the block, prompt `name` (the id yielded) conditions on `embedded` (one row per key); the prompt
        table is restored afterwards."""
        saved = (list(self.prompts), dict(self.prompt_ids), dict(self.embeddings))
        self.embeddings = {k: torch.cat([v, embedded[k].to(v.device, v.dtype)]) for k, v in self.embeddings.items()}
        self.prompt_ids[name] = len(self.prompts)
        self.prompts.append(name)
        try:
            yield self.prompt_ids[name]
        finally:
            self.prompts, self.prompt_ids, self.embeddings = saved

    def null_condition(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, dtype=torch.long, device=self.device)

    def condition_batch(self, conditions, device):
        """Prompts are encoded for this batch only (sampling thousands of prompts must not grow the table)."""
        if all(isinstance(c, str) for c in conditions):
            return {k: v.to(device) for k, v in self.encode_prompts(list(conditions)).items()}
        return torch.as_tensor(conditions, dtype=torch.long, device=device)

    def trains(self, choice: str, name: str) -> bool:
        if choice == "full":
            return True
        if choice == "xattn":
            return self.text_attention(name)
        return not (self.text_attention(name) or name.startswith(self.output_layers))

    def select_trainable(self, choice: str) -> None:
        """Freeze every denoiser parameter outside `choice` (full | xattn | noxattn)."""
        if choice not in TRAIN_PARAMS:
            raise OptionError(f"{option('--train-params')} {choice!r} is not one of {sorted(TRAIN_PARAMS)}")
        for name, parameter in self.denoiser.named_parameters():
            parameter.requires_grad_(self.trains(choice, name))
        self.info["train_params"] = choice
        self.info["train_params_rule"] = {"full": "every parameter",
                                          "xattn": self.text_attention_rule,
                                          "noxattn": f"all but {self.text_attention_rule} and {list(self.output_layers)}"}[choice]

    text_attention_rule = "the attention that reads the text"

    @classmethod
    def folder_options(cls, index: dict) -> dict:
        """Constructor arguments a family reads from model_index.json besides its components (SDXL: the null)."""
        return {}

    @classmethod
    def from_pretrained(cls, directory: str | Path, train_params: str = "full", **kwargs):
        """A `pipeline_class` folder: every component the adapter takes, loaded with the class model_index.json
        names for it (None where the folder saves it as [null, null]); `kwargs` go to the trained component."""
        from erase.pipelines.base import ERASE_KEY, read_model_index

        index = read_model_index(directory)
        parts = load_components(directory, index, cls, kwargs)
        return cls(**parts, info=index.get(ERASE_KEY), source=Path(directory), train_params=train_params,
                   **cls.folder_options(index))


def load_components(directory: str | Path, index: dict, adapter_class, denoiser_kwargs: dict) -> dict:
    """{name: component} for each constructor argument of `adapter_class` that model_index.json lists, loaded as
    diffusers' DiffusionPipeline loads it (the [library, class] the index names, local files only); a component saved
    as [null, null] is None, and one the constructor takes but the index lacks is refused."""
    import importlib
    import inspect

    from erase.errors import ModelError

    directory = Path(directory)
    parameters = inspect.signature(adapter_class.__init__).parameters
    parts = {}
    for name in parameters:
        spec = index.get(name)
        if name in ("self", "info", "source", "train_params") or not isinstance(spec, list):
            if name not in ("self", "info", "source", "train_params") and parameters[name].default is inspect.Parameter.empty:
                raise ModelError(f"{str(directory)!r} is not a {adapter_class.pipeline_class} folder: model_index.json "
                                 f"lists no {name}")
            continue
        library, class_name = (spec + [None, None])[:2]
        if library is None:
            parts[name] = None
            continue
        component_class = getattr(importlib.import_module(library), class_name, None)
        if component_class is None:
            raise ModelError(f"{str(directory)!r}: model_index.json names {library}.{class_name} for {name}, which "
                             f"this {library} does not have")
        options = {"subfolder": name}
        if library == "transformers":
            options["local_files_only"] = True
        if name == adapter_class.trained_component:
            options.update(denoiser_kwargs)
        parts[name] = quiet_load(component_class, directory, **options)
    return parts


def quiet_load(model_class, directory, **kwargs):
    """transformers' `from_pretrained` without its per-load progress bar: diffusers loads the UNet and VAE without
    one, and the bar would stand above a one-line error that follows the load (e.g. a bad --forget-prompts file)."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return model_class.from_pretrained(directory, **kwargs)
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def write_character_vocabulary(directory: Path, words=()) -> Path:
    """A character-level CLIP BPE vocabulary covering lowercase text, digits and punctuation, plus merges that make
    each of `words` one token (every piece in the vocabulary; a later word's merges rank below every earlier one's,
    so they never split an earlier word): a frozen random text encoder
    then sees a caption's words as distinct tokens instead of runs of shared letters. Other text still tokenizes,
    by characters."""
    import json
    import string

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in string.ascii_lowercase + string.digits + string.punctuation:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    merges: dict[tuple[str, str], int] = {}  # pair -> rank
    for word in dict.fromkeys(w for w in words if len(w) > 1):
        pieces = _byte_pair_pieces(word, merges)
        while len(pieces) > 1:  # join what the earlier words' merges leave, left to right, at the lowest ranks
            merges.setdefault((pieces[0], pieces[1]), len(merges))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return directory


def _byte_pair_pieces(word: str, merges: dict) -> list[str]:
    """CLIP's BPE of one word under `merges` (pair -> rank): merge the lowest-ranked adjacent pair until none is."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        ranked = [(merges.get(pair, float("inf")), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, at = min(ranked)
        if rank == float("inf"):
            break
        pieces = pieces[:at] + [pieces[at] + pieces[at + 1]] + pieces[at + 2:]
    return pieces
