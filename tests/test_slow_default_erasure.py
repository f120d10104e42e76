"""`erase unlearn` with default flags on the shipped digit model: the class goes, the rest stays (slow: about
2 min per digit on 2 cores, 251 s for both: about 70 s erasing, 2 x 500 samples).

Judged as users judge it, by sampling both models with the same seeds and classifying: FA <= 5% and mean RA of
the other digits within 3 points of the base model's (the default's targets: 50 samples per digit, DDIM 25, the
stored guidance scale).
"""

import json

import pytest

from erase.eval.class_scores import sample_classes
from erase.eval.classifier import forgetting_metrics, load_classifier, predict_probabilities
from erase.pipelines import load_adapter
from erase.cli.main import main
from erase.models import SHIPPED_MODEL


def scores(folder, forget_class, classifier):
    samples = sample_classes(load_adapter(folder), per_class=50, seed=0, num_inference_steps=25)
    return forgetting_metrics(predict_probabilities(classifier, samples.images), samples.conditions, [forget_class])


@pytest.mark.slow
@pytest.mark.parametrize("forget_class", [
    5,  # the development digit of docs/ablation.md
    7,  # the digit the preset was chosen on, the slowest to forget under the official objective
])
def test_default_unlearn_forgets_the_digit_and_keeps_the_others(tmp_path, forget_class):
    out = tmp_path / "erased"
    assert main(["unlearn", "--model", str(SHIPPED_MODEL), "--forget-class", str(forget_class), "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["preset"]["name"] == "cfg_unet" and record["conventions"]["remain_label_dropout"] == 0.1
    classifier = load_classifier("digits")
    base, erased = scores(SHIPPED_MODEL, forget_class, classifier), scores(out, forget_class, classifier)
    assert base["forgetting_accuracy"] >= 0.9  # the digit was there to erase
    assert erased["forgetting_accuracy"] <= 0.05, erased
    assert erased["remaining_accuracy_mean"] >= base["remaining_accuracy_mean"] - 0.03, (base, erased)


@pytest.mark.slow
def test_nabla_tau_preset_forgets_digit_7_and_keeps_the_others(tmp_path):
    """Nabla-tau at its cfg_unet preset (--direction pseudo --pseudo-random, docs/nabla-tau.md) on digit 7, seed 0,
    judged like SFR-on above. The authors' plain ascent left digit 7 at FA 47-57% on this seed."""
    out = tmp_path / "erased"
    assert main(["unlearn", "--model", str(SHIPPED_MODEL), "--method", "nabla_tau", "--forget-class", "7",
                 "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["preset"]["name"] == "cfg_unet" and record["method_record"]["direction"] == "pseudo"
    classifier = load_classifier("digits")
    base, erased = scores(SHIPPED_MODEL, 7, classifier), scores(out, 7, classifier)
    assert erased["forgetting_accuracy"] <= 0.05, erased
    assert erased["remaining_accuracy_mean"] >= base["remaining_accuracy_mean"] - 0.03, (base, erased)
