"""`erase sample | grid | score` on a tiny model: generation writes images, scoring reads them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from erase.eval.grid import image_grid
from erase.cli.main import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err, captured.out


@pytest.fixture(scope="module")
def samples(trained_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("samples") / "s"
    assert main(["sample", "--model", str(trained_model_dir), "--classes", "0-9", "--n-per-condition", "3",
                 "--steps", "5", "--out", str(out)]) == 0
    return out


def test_sample_writes_pngs_and_an_index_with_condition_and_seed(samples):
    index = json.loads((samples / "index.json").read_text())
    assert len(index["images"]) == 30 and index["num_inference_steps"] == 5 and index["sampler"].startswith("DDIM, eta 0")
    first = index["images"][0]
    assert first == {"file": "images/000000.png", "condition": 0, "class_name": "0", "seed": 0, "guidance_scale": 1.0}
    assert [r["seed"] for r in index["images"][:3]] == [0, 1, 2]
    assert Image.open(samples / first["file"]).size == (8, 8)


def test_each_image_depends_on_its_seed_not_its_batch(samples, trained_model_dir, tmp_path, capsys):
    out = tmp_path / "one"
    code, err, _ = run_cli(capsys, "sample", "--model", trained_model_dir, "--classes", "3", "--n-per-condition", "2",
                           "--seed", "1", "--steps", "5", "--batch-size", "1", "--out", out)
    assert code == 0, err
    index = json.loads((samples / "index.json").read_text())["images"]
    reference = next(r for r in index if r["condition"] == 3 and r["seed"] == 1)
    again = np.asarray(Image.open(out / "images" / "000000.png")).astype(int)
    assert np.abs(again - np.asarray(Image.open(samples / reference["file"])).astype(int)).max() <= 1


def test_grid_of_ten_classes_by_four_seeds_has_the_expected_size_and_labels(trained_model_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, err, _ = run_cli(capsys, "grid", "--model", f"base={trained_model_dir}", "--model", f"copy={trained_model_dir}",
                           "--classes", "0-9", "--seeds", "0-3", "--steps", "3", "--cell", "24", "--out", out)
    assert code == 0, err
    grid = Image.open(out).convert("RGB")
    rows = {f"{name} s{seed}": None for seed in range(4) for name in ("base", "copy")}
    reference = image_grid({r: torch.zeros(10, 1, 8, 8) for r in rows}, [str(i) for i in range(10)], cell=24)
    assert grid.size == reference.size and grid.height == 16 + 8 * 26 + 2
    pixels = np.asarray(grid)
    label_width = grid.width - 10 * 26 - 2
    for r in range(8):  # every row has a label: dark text pixels left of the images
        band = pixels[16 + 2 + r * 26 : 16 + 2 + r * 26 + 24, :label_width]
        assert (band < 100).any(), f"row {r} has no label"
    assert (pixels[:14, label_width:] < 100).any(), "column labels missing"
    base_rows = pixels[18 : 18 + 24, label_width:], pixels[18 + 26 : 18 + 50, label_width:]
    assert np.array_equal(*base_rows), "the same model and seed must give the same row"


def test_score_reports_classifier_and_fid_with_their_settings(samples, tmp_path, capsys):
    out = tmp_path / "scores.json"
    code, err, printed = run_cli(capsys, "score", "--images", samples, "--classifier", "digits", "--forget-class", "7",
                                 "--fid-ref", "digits", "--cache-dir", tmp_path / "cache", "--out", out)
    assert code == 0, err
    scores = json.loads(out.read_text())
    assert scores["image_count"] == 30 and scores["forget_classes"] == [7]
    assert 0 <= scores["classifier"]["forgetting_accuracy"] <= 1 and len(scores["classifier"]["remaining_accuracy"]) == 9
    assert scores["fid"]["features"] == "classifier" and scores["fid"]["samples"] == {"real": 1797 - 179, "generated": 27}
    assert scores["fid"]["value"] > 0 and list((tmp_path / "cache").iterdir())
    assert scores["sampling"]["num_inference_steps"] == 5 and scores["environment"]["packages"]["torchmetrics"]
    assert "FA" in printed and "FID" in printed


@pytest.mark.parametrize("argv, message", [
    (["sample", "--prompts", "x.csv", "--n-per-condition", "1"], "takes class ids, not prompts"),
    (["sample", "--classes", "11", "--n-per-condition", "1"], r"class ids \[11\] do not exist"),
    (["grid", "--model", "nameless", "--classes", "0"], "must look like NAME=DIR"),
])
def test_bad_sample_and_grid_arguments_exit_2(trained_model_dir, tmp_path, capsys, argv, message):
    import re

    argv = [a if a != "nameless" else str(trained_model_dir) for a in argv]
    if argv[0] == "sample":
        argv += ["--model", trained_model_dir]
    out = tmp_path / ("o.png" if argv[0] == "grid" else "o")
    code, err, _ = run_cli(capsys, *argv, "--out", out)
    assert code == 2 and re.search(message, err), err
    assert not out.exists()


def test_score_with_nothing_to_score_exits_2(tmp_path, capsys):
    code, err, _ = run_cli(capsys, "score", "--images", tmp_path, "--out", tmp_path / "s.json")
    assert code == 2 and "nothing to score" in err


def test_ablation_at_toy_size_writes_one_scored_row_per_change_and_the_defaults_row(tmp_path, capsys):
    from erase.cli.ablation import ablation_rows

    code = main(["ablation", "--out", str(tmp_path / "out"), "--steps", "1", "--fisher-batches", "1", "--per-class",
                 "1", "--sample-steps", "1", "--monitor-every", "1", "--monitor-samples", "1",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = results["rows"]
    assert [r["label"] for r in rows] == ["base model", *(label for label, _, _ in ablation_rows())]
    assert rows[1]["conventions"]["forget_reduction"] == "mean" and rows[2]["conventions"]["forget_reduction"] == "sum"
    assert rows[2]["conventions"]["remain_label_dropout"] == 0 and rows[3]["conventions"]["remain_label_dropout"] == 0.1
    defaults = next(r for r in rows if r["label"] == "defaults")
    assert defaults["flags"] == [] and defaults["preset"]["name"] == "cfg_unet"
    # the chain ends one change from the preset: the last cumulative row differs from the defaults only in what the
    # defaults row names (here steps and Fisher batches are overridden on every row, so lr and the forget schedule are left)
    last = rows[rows.index(defaults) - 1]
    changed = {key for key in defaults["config"] if defaults["config"][key] != last["config"][key]}
    assert changed == {"lr", "forget_every", "forget_dense"}, changed
    report = (tmp_path / "out" / "ablation.md").read_text()
    assert "Quick run" in report and report.count("\n| ") == len(rows) + 1


def test_run_cache_key_moves_with_its_own_methods_preset_only(monkeypatch):
    from erase.methods.sfron import SFRON_PRESETS
    from erase.cli.harness import method_defaults, unlearn_method

    assert unlearn_method(["--model", "m", "--forget-class", 1, "--method", "rl", "--steps", 3]) == "rl"
    assert unlearn_method(["--model", "m", "--forget-class", 1]) == "sfron"  # erase unlearn's default
    before = {name: method_defaults(name) for name in ("sfron", "rl")}
    monkeypatch.setitem(SFRON_PRESETS, "cfg_unet", {**SFRON_PRESETS["cfg_unet"], "steps": 7})
    assert method_defaults("sfron") != before["sfron"]  # an SFR-on run cached under the old preset is stale
    assert method_defaults("rl") == before["rl"]  # an RL run is not
