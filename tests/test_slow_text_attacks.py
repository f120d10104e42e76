"""The prompt attacks should have power on a trained text-conditional model (docs/attacks.md; about 20 min on 2 cores,
the training most of it). They do not yet: measured 2026-11-30, the hidden prompt's FA 32.5% fell to 0% under both
attacks (and the adversarial prompt took the base model's 100% to 27.5%) while each attack lowered its denoising loss;
the test is a strict xfail until they do.

The tiny Stable-Diffusion-architecture digit model of test_slow_text_erasure.py ("a photo of the digit seven", a
frozen random CLIP, pixel space, 16 px) is trained, the prompt for seven is hidden by a few gradient-ascent steps,
and concept inversion (a new token in "a photo of {}") and the adversarial prompt (tokens in front of the prompt,
projected to the vocabulary) each try to bring seven back, judged by the digit classifier.
"""

import pytest

import erase
from erase.data import split_by_class
from erase.engine import Runtime
from erase.ga import GAConfig, ga
from tests.test_slow_text_erasure import PROMPTS, trained_text_digit_model


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the prompt attacks lower the loss but do not bring seven back yet "
                                        "(docs/attacks.md, 'Text models')")
def test_inversion_and_an_adversarial_prompt_bring_back_a_hidden_prompt(tmp_path):
    adapter, ids, by_prompt = trained_text_digit_model(tmp_path)
    adapter.info["guidance_scale"] = 2.0  # the scale test_slow_text_erasure measured the model at
    forget, remain = split_by_class(by_prompt, [int(ids[7])])
    ga(adapter, forget, remain, GAConfig(steps=10, lr=1e-4, batch_size=32), Runtime(seed=0))
    hidden = tmp_path / "hidden"
    adapter.save_pretrained(hidden)

    common = dict(forget=[PROMPTS[7]], concept_class=7, data="mnist", samples=40)
    inversion = erase.attack(hidden, attack="inversion", **common)["rows"][0]
    adversarial = erase.attack(hidden, attack="adversarial", **common)["rows"][0]
    print(f"\nhidden FA {inversion['fa_before']:.3f}; inversion {inversion['fa_after']:.3f}; adversarial "
          f"{adversarial['fa_after']:.3f} with {adversarial['prompt']!r}")
    assert inversion["fa_before"] <= 0.4, inversion  # hidden (measured 32.5%; 0% after 10 steps at lr 3e-4)
    assert inversion["fa_after"] >= inversion["fa_before"] + 0.3, inversion
    assert adversarial["fa_after"] >= adversarial["fa_before"] + 0.2, adversarial
