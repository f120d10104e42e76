"""CLIP score (Hessel et al. 2021, "CLIPScore", Eq. 1 without its w = 2.5) of each image against its own prompt.

torchmetrics' `CLIPScore` defines the score as 100 * cos(E_image, E_prompt), averaged over the images and then clipped
at 0 (its `compute`: max(mean, 0)); every mean reported here follows that definition, overall, per prompt, and for
the forget prompts against the rest. The CLIP model is read from a local folder only (a transformers `CLIPModel`
and `CLIPProcessor` saved with `save_pretrained`, e.g. a downloaded openai/clip-vit-large-patch14): torchmetrics
itself accepts only hub names, so it gets a loader for that folder, and nothing is downloaded at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from erase.errors import DataError, ModelError, option

FLAG = ("--clip-model", "clip_model")
DEFINITION = "torchmetrics CLIPScore: max(mean over images of 100 * cos(CLIP image embedding, prompt embedding), 0)"


class CLIPEmbeddings(nn.Module):
    """A CLIPModel whose get_image_features / get_text_features return the projected embeddings as tensors.

    transformers 5 returns a BaseModelOutputWithPooling (the embedding in `pooler_output`) where torchmetrics 1.9
    expects the tensor that transformers 4 returned.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config  # torchmetrics reads text_config.max_position_embeddings

    @staticmethod
    def _tensor(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class TruncatingProcessor:
    """The CLIPProcessor, truncating prompts to the text model's length with their end token kept.

    torchmetrics cuts over-long token sequences itself, which drops the end-of-text token CLIP pools at; long I2P
    prompts would then be embedded from an arbitrary token.
    """

    def __init__(self, processor, max_length: int):
        self.processor, self.max_length = processor, max_length

    def __call__(self, *args, **kwargs):
        if kwargs.get("text") is not None:
            kwargs.update(truncation=True, max_length=self.max_length)
        return self.processor(*args, **kwargs)


def load_clip(folder: str | Path) -> tuple[CLIPEmbeddings, TruncatingProcessor]:
    """CLIPModel + CLIPProcessor from a local folder (local_files_only), refused with the fix when it is not one."""
    path = Path(folder)
    where = f"{option(*FLAG)} {str(folder)!r}"
    fix = ("pass a local folder holding a transformers CLIPModel and its CLIPProcessor (saved with save_pretrained, "
           "e.g. a downloaded openai/clip-vit-large-patch14); nothing is downloaded at run time")
    if not path.is_dir():
        raise ModelError(f"{where} is not a folder; {fix}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{where} has no config.json; {fix}")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ModelError(f"{where}: config.json is not a valid JSON object ({error}); {fix}") from None
    if model_type != "clip":
        raise ModelError(f"{where} holds a {model_type!r} model (config.json model_type), not 'clip'; {fix}")
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except Exception as error:  # missing weights or tokenizer files, a damaged file: transformers' own message
        first = str(error).strip().split("\n")[0].rstrip(".")
        raise ModelError(f"{where} cannot be loaded as a CLIP model and processor ({type(error).__name__}: "
                         f"{first}); {fix}") from None
    model.requires_grad_(False)
    return CLIPEmbeddings(model), TruncatingProcessor(processor, model.config.text_config.max_position_embeddings)


@torch.no_grad()
def image_text_scores(pixels: torch.Tensor, prompts: Sequence[str], model: CLIPEmbeddings, processor,
                      batch_size: int = 64) -> torch.Tensor:
    """100 * cos(image, its prompt) per image, (N,), unclipped: the values torchmetrics' CLIPScore sums.

    pixels: uint8 (N, C, H, W); one channel is repeated to three. Per-image values (rather than one CLIPScore
    state) give the per-prompt means in one batched pass over the images.
    """
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update  # what CLIPScore.update runs

    if pixels.dtype != torch.uint8:
        raise DataError(f"CLIP score takes uint8 images, got {pixels.dtype}")  # the processor rescales by 1/255
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parts = []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size].to(device)
        score, _ = _clip_score_update(list(batch), list(prompts[start : start + batch_size]), model, processor)
        parts.append(score.float().cpu())
    return torch.cat(parts)


def clip_score_value(scores: torch.Tensor) -> float:
    """CLIPScore.compute: the mean clipped at 0."""
    return max(float(scores.mean()), 0.0)


def summarize_clip_scores(scores: torch.Tensor, prompts: Sequence[str], name: str,
                          forget_prompts: Sequence[str] = ()) -> dict:
    """Mean CLIP score overall, per prompt (in first-seen order) and, when `forget_prompts` is given, for the
    images of those prompts against the others; `scores` are `image_text_scores` of the images of `prompts`."""
    if len(prompts) != len(scores):
        raise DataError(f"{len(prompts)} prompts for {len(scores)} images")
    by_prompt: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_prompt.setdefault(prompt, []).append(index)
    result = {
        "model": name, "definition": DEFINITION, "images": len(prompts), "score": clip_score_value(scores),
        "per_prompt": [{"prompt": prompt, "images": len(indices), "score": clip_score_value(scores[indices])}
                       for prompt, indices in by_prompt.items()],
    }
    if forget_prompts:
        forget = torch.tensor([p in set(forget_prompts) for p in prompts])
        result["forget_prompts"] = list(forget_prompts)
        result["forget_score"] = clip_score_value(scores[forget]) if forget.any() else None
        result["other_score"] = clip_score_value(scores[~forget]) if (~forget).any() else None
        result["forget_images"], result["other_images"] = int(forget.sum()), int((~forget).sum())
    return result
