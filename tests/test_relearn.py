"""The relearning probe (erase/eval/relearn.py): a digit hidden by a few gradient-ascent steps comes back when the
erased model is fine-tuned on real images of it, and the probe leaves the model and the random state as it found
them. Runs on the shipped 16 px digit model, judged by sampling and classifying (about 30 s on 2 cores)."""

import pytest
import torch

from erase.data import load_dataset, split_by_class
from erase.engine import Runtime
from erase.methods.ga import GAConfig, ga
from erase.eval.classifier import load_classifier
from erase.eval.probe import forgetting_probe
from erase.eval.relearn import RELEARN_IMAGES, relearn_curve
from erase.pipelines import load_adapter
from erase.models import SHIPPED_MODEL

DIGIT = 7


def test_fine_tuning_on_the_forget_digit_brings_back_what_gradient_ascent_hid():
    adapter = load_adapter(SHIPPED_MODEL)
    forget, remain = split_by_class(load_dataset("mnist", 16), [DIGIT])
    probe = forgetting_probe(load_classifier("digits"), [DIGIT], samples=40, num_inference_steps=10)
    assert probe(adapter)["fa"] >= 0.9  # the digit is there
    ga(adapter, forget, remain, GAConfig(steps=10, lr=3e-4, batch_size=32), Runtime(seed=0))
    erased_fa = probe(adapter)["fa"]
    assert erased_fa <= 0.2  # hidden (measured 7.5%; at lr 1e-3 ascent wrecks the model and nothing comes back)

    weights = {name: value.clone() for name, value in adapter.denoiser.state_dict().items()}
    rng = torch.get_rng_state()
    images, labels = forget.images[:RELEARN_IMAGES], forget.labels[:RELEARN_IMAGES]
    curve = relearn_curve(adapter, images, labels, probe, milestones=(10, 25))
    assert [row["step"] for row in curve] == [10, 25]
    assert curve[-1]["fa"] >= erased_fa + 0.5, curve  # it comes back
    assert all(torch.equal(weights[name], value) for name, value in adapter.denoiser.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_milestones_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        relearn_curve(None, torch.zeros(1), torch.zeros(1), lambda adapter: {}, milestones=(0, 10))
