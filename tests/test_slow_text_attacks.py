"""The prompt attacks have power on a trained text-conditional model (docs/attacks.md; about 20 min on 2 cores, the
training most of it).

The tiny Stable-Diffusion-architecture digit model of test_slow_text_erasure.py ("a photo of the digit seven", a
frozen random CLIP, pixel space, 16 px) is trained, and ESD-x (cross-attention only) remaps the prompt for seven:
the denoiser can still draw a seven, only the prompt no longer leads there, which is the case Pham et al. found
every erasure method of 2023 in. Concept inversion (a new token in the model's caption form) and the adversarial
prompt (tokens in front of the prompt, projected to the vocabulary) must each bring seven back, judged by the digit
classifier. Measured 2026-11-30 on the same recipe: FA 0% -> 72.5% (inversion) and 67.5% (adversarial).
"""

import pytest

import erase
from tests.test_slow_text_erasure import PROMPTS, trained_text_digit_model


@pytest.mark.slow
def test_inversion_and_an_adversarial_prompt_bring_back_a_prompt_erased_by_esd_x(tmp_path):
    adapter, _, _ = trained_text_digit_model(tmp_path)
    adapter.info["guidance_scale"] = 2.0  # the scale test_slow_text_erasure measured the model at
    base = tmp_path / "base"
    adapter.save_pretrained(base)
    erased = tmp_path / "esd-x"
    erase.unlearn(base, forget=[PROMPTS[7]], remain=[p for p in PROMPTS if p != PROMPTS[7]], method="esd",
                  train_params="xattn", steps=200, lr=1e-3, ddim_steps=25, out=erased)

    common = dict(forget=[PROMPTS[7]], concept_class=7, data="mnist", samples=40)
    inversion = erase.attack(erased, attack="inversion", template="a photo of the digit {}", **common)["rows"][0]
    adversarial = erase.attack(erased, attack="adversarial", **common)["rows"][0]
    print(f"\nerased FA {inversion['fa_before']:.3f}; inversion {inversion['fa_after']:.3f}; adversarial "
          f"{adversarial['fa_after']:.3f} with {adversarial['prompt']!r}")
    assert inversion["fa_before"] <= 0.1, inversion  # erased (measured 0%)
    assert inversion["fa_after"] >= inversion["fa_before"] + 0.3, inversion
    assert adversarial["fa_after"] >= adversarial["fa_before"] + 0.3, adversarial
