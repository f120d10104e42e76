"""The text side of the styled digits: whole-word tokens for captions, real renderings as forget and remain sets
for caption prompts, and the shipped text-to-image model in plain diffusers."""

import re

import pytest
import torch

from erase.data import ImageDataset
from erase.errors import DataError
from erase.models import SHIPPED_TEXT_MODEL
from erase.sources import Targets, from_captioned_dataset
from erase.prompts import PromptRow
from erase.styled import CAPTIONS, STYLE_KEYS, Concept, caption, erasure_prompts

NEON = STYLE_KEYS.index("neon")


def test_caption_words_are_single_tokens_and_other_text_still_tokenizes(tmp_path):
    from erase.pipelines.stable_diffusion import tiny_text_encoder

    words = sorted({w for p in CAPTIONS for w in re.findall(r"[a-z]+|[0-9]", p)})
    _, tokenizer = tiny_text_encoder(tmp_path, 32, 32, words)
    for word in words:
        assert tokenizer.convert_ids_to_tokens(tokenizer(word).input_ids)[1:-1] == [word + "</w>"], word
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("a cat").input_ids)[1:-1]
    assert "".join(pieces).replace("</w>", "") == "acat"  # unknown words fall back to characters
    assert max(len(tokenizer(p).input_ids) for p in CAPTIONS) <= 12


class PromptTable:
    """The part of an adapter from_captioned_dataset calls: ids of prompts, in order of first sight."""

    def __init__(self):
        self.class_names = []

    def register_prompts(self, prompts):
        for p in prompts:
            if p not in self.class_names:
                self.class_names.append(p)
        return torch.tensor([self.class_names.index(p) for p in prompts])


def test_caption_prompts_take_the_renderings_of_their_digit_and_style():
    digits = torch.tensor([3, 3, 3, 4, 4, 3, 5, 3])
    styles = torch.tensor([NEON, NEON, 0, NEON, 0, NEON, 1, 1])
    data = ImageDataset(torch.arange(8.0).view(8, 1, 1, 1), torch.zeros(8, dtype=torch.long), list(CAPTIONS), "t",
                        concepts={"digit": digits, "style": styles})
    row = lambda p: PromptRow(p, None, None, "0")
    forget = [caption(3, NEON, 0), caption(3, NEON, 1), caption(4, NEON, 0)]
    remain = [caption(3, 0, 0), caption(4, 0, 2), caption(3, NEON, 2)]  # the last names a forget pair: gets nothing
    table = PromptTable()
    f, r = from_captioned_dataset(table, data, Targets([row(p) for p in forget], [row(p) for p in remain]))
    assert sorted(f.images.flatten().tolist()) == [0, 1, 3, 5]  # every neon 3 and the neon 4
    assert sorted(r.images.flatten().tolist()) == [2, 4]
    names = [table.class_names[i] for i in f.labels.tolist()]
    assert sorted([names.count(caption(3, NEON, 0)), names.count(caption(3, NEON, 1))]) == [1, 2]  # in turn
    by_image = dict(zip(f.images.flatten().tolist(), names))
    assert {by_image[0], by_image[1], by_image[5]} == {caption(3, NEON, 0), caption(3, NEON, 1)}  # taken in turn
    assert by_image[3] == caption(4, NEON, 0)
    with pytest.raises(DataError, match="not one of"):
        from_captioned_dataset(table, data, Targets([row("a cat")], [row(remain[0])]))


def test_demo_forget_set_names_one_style():
    prompts = erasure_prompts(Concept("style", NEON))
    assert all(STYLE_KEYS[NEON] in p for p in prompts)


@pytest.mark.skipif(not (SHIPPED_TEXT_MODEL / "model_index.json").is_file(), reason="the shipped text model is absent")
def test_shipped_text_model_loads_and_samples_in_plain_diffusers():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED_TEXT_MODEL, vae=None, safety_checker=None,
                                                   local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    size = pipe.unet.config.sample_size
    side = size * pipe.vae_scale_factor  # with no VAE, diffusers still divides height and width by its default 8
    out = pipe(caption(3, NEON), num_inference_steps=3, guidance_scale=2.0, height=side, width=side,
               output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, size, size) and torch.isfinite(out).all()
    assert sum(p.stat().st_size for p in SHIPPED_TEXT_MODEL.rglob("*") if p.is_file()) <= 15 * 2**20


def test_nearest_prompts_swap_the_style_and_keep_the_digit_and_template():
    from erase.objectives import nearest_prompts, pseudo_labels
    from erase.styled import STYLES, DIGIT_WORDS

    forget = erasure_prompts(Concept("style", NEON))
    remain = [p for s in range(len(STYLES)) if s != NEON for p in erasure_prompts(Concept("style", s))]
    names = forget + remain
    table = nearest_prompts(names, range(len(forget)), range(len(forget), len(names)))
    neon = STYLES[NEON].names[0]
    for i, prompt in enumerate(forget):
        anchor = names[int(table[i])]
        assert anchor in remain
        # put the anchor's style name back to neon: the forget prompt, word for word
        other = next(s.names[0] for s in STYLES if s.key != "neon" and f" {s.names[0]} " in f" {anchor} ")
        assert anchor.replace(other, neon) == prompt, (prompt, anchor)
    assert all(int(table[j]) == j for j in range(len(forget), len(names)))  # remain prompts map to themselves
    labels = torch.tensor([0, 5, len(forget)])
    assert pseudo_labels(labels, table, torch.arange(len(names))).tolist() == table[labels].tolist()
    assert DIGIT_WORDS[7] in names[int(table[forget.index(next(p for p in forget if "seven" in p))])]


def test_pixel_text_models_take_their_own_sfron_preset_and_fall_back_to_the_backbones():
    from erase.api import choose_preset

    chosen = choose_preset("sfron", "auto", ["pixel_text", "stable_diffusion"])
    assert chosen["name"] == "pixel_text" and chosen["values"]["pseudo_anchor"] == "nearest"
    assert choose_preset("sfron", "auto", "stable_diffusion")["values"]["batch_size"] == 2
    fallback = choose_preset("nabla_tau", "auto", ["pixel_text", "cfg_unet"])
    assert fallback["name"] == "cfg_unet"  # nabla_tau has no pixel_text preset: the next name it has


def test_nearest_anchor_is_refused_on_a_class_model(tmp_path):
    from erase.errors import OptionError
    from erase.api import unlearn
    from tests.conftest import tiny_adapter

    cfg_model_dir = tmp_path / "cfg"
    tiny_adapter().save_pretrained(cfg_model_dir)

    with pytest.raises(OptionError, match="--pseudo-anchor"):
        unlearn(cfg_model_dir, forget=[7], data="digits", steps=1, batch_size=4, fisher_batches=1,
                forget_objective="pseudo", pseudo_anchor="nearest")


def test_nearest_anchor_is_refused_beside_a_fixed_or_random_pseudo_class(tmp_path):
    from erase.api import unlearn
    from erase.errors import OptionError

    with pytest.raises(OptionError, match="chooses each forget prompt's anchor itself"):
        unlearn(SHIPPED_TEXT_MODEL, forget=[caption(3, NEON)], remain=[caption(4, NEON)], steps=1,
                batch_size=2, fisher_batches=1, pseudo_anchor="nearest", pseudo_random=True, out=tmp_path / "o")
