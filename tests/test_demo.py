import json

import pytest
import torch
from PIL import Image

from erase.eval.grid import image_grid
from erase.cli.main import main
from erase.models import SHIPPED_MODEL, SHIPPED_TEXT_MODEL
from tests.conftest import tree_digest


def test_grid_has_one_cell_per_model_and_condition():
    rows = {"base": torch.zeros(3, 1, 8, 8), "erased": torch.ones(3, 1, 8, 8)}
    grid = image_grid(rows, ["a", "b", "c"], cell=20, padding=2)
    label_width = grid.width - 3 * 22 - 2
    assert grid.height == 16 + 2 * 22 + 2 and label_width > 8
    assert grid.getpixel((label_width + 2 + 5, 16 + 2 + 5)) == (0, 0, 0)  # base row, first cell: black
    assert grid.getpixel((label_width + 2 + 5, 16 + 24 + 5)) == (255, 255, 255)  # erased row: white
    with pytest.raises(ValueError, match="3 columns"):
        image_grid({"x": torch.zeros(2, 1, 8, 8)}, ["a", "b", "c"])


def test_demo_on_the_shipped_model_at_toy_size(tmp_path, capsys):
    before = tree_digest(SHIPPED_MODEL)
    code = main(["demo", "--out", str(tmp_path), "--steps", "2", "--per-class", "2", "--sample-steps", "2",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores["scores"]) == {"base", "erased"} and scores["forget_class"] == 7
    for model in scores["scores"].values():
        assert 0 <= model["forgetting_accuracy"] <= 1 and len(model["remaining_accuracy"]) == 9
        assert model["fid_real"] >= 0
    assert 0 < scores["mask_sparsity"]["overall"] < 1 and scores["timings"]["total"] > 0
    assert Image.open(tmp_path / "grid.png").size[1] == 16 + 4 * 50 + 2  # 4 rows: 2 models x 2 seeds
    assert "mean RA" in capsys.readouterr().out
    assert tree_digest(SHIPPED_MODEL) == before  # the shipped model is read only


@pytest.mark.skipif(not (SHIPPED_TEXT_MODEL / "model_index.json").is_file(), reason="the shipped text model is absent")
def test_text_demo_on_the_shipped_text_model_at_toy_size(tmp_path, capsys):
    from erase.styled import evaluation_prompts, parse_concept

    before = tree_digest(SHIPPED_TEXT_MODEL)
    code = main(["demo", "--text", "--forget-style", "sepia", "--out", str(tmp_path), "--steps", "2",
                 "--per-prompt", "1", "--sample-steps", "2"])
    assert code == 0, capsys.readouterr().err
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["forget_concept"] == "style:sepia" and scores["preset"]["name"] == "pixel_text"
    assert scores["evaluation_prompts"] == len(evaluation_prompts(parse_concept("style:sepia")))
    for model in scores["scores"].values():
        for key in ("unlearning_accuracy", "in_domain_retain_accuracy", "cross_domain_retain_accuracy", "kept"):
            assert 0 <= model[key] <= 1
    assert scores["config"]["pseudo_anchor"] == "nearest"
    anchors = json.loads((tmp_path / "erased" / "run.json").read_text())["conventions"]["pseudo_class"]
    assert all("sepia" in f and "sepia" not in a for f, a in anchors.items())  # each prompt to another style's
    assert Image.open(tmp_path / "grid.png").size[1] == 16 + 12 * 50 + 2  # 3 styles x 4 digits
    assert "UA" in capsys.readouterr().out
    assert tree_digest(SHIPPED_TEXT_MODEL) == before  # the shipped model is read only


def test_demo_without_the_base_model_exits_2(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err


def test_shipped_base_model_draws_the_digits_it_is_asked_for():
    from diffusers import UNet2DModel

    from erase.eval.class_scores import sample_classes
    from erase.eval.classifier import forgetting_metrics, load_classifier, predict_probabilities
    from erase.pipelines import load_adapter

    assert UNet2DModel.from_pretrained(SHIPPED_MODEL).config.num_class_embeds == 11  # plain diffusers loads it
    adapter = load_adapter(SHIPPED_MODEL)
    assert adapter.info["guidance_scale"] == 1.25  # chosen by `erase guidance` (erase/assets/README.md)
    samples = sample_classes(adapter, per_class=10, seed=100, num_inference_steps=25)
    metrics = forgetting_metrics(predict_probabilities(load_classifier("digits"), samples.images), samples.conditions, [])
    assert metrics["remaining_accuracy_mean"] >= 0.9, metrics["remaining_accuracy"]  # 98.0% on 50 per digit
