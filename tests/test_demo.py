import json

import pytest
import torch
from PIL import Image

from eval.grid import image_grid
from scripts.cli import main


def test_grid_has_one_cell_per_model_and_condition():
    rows = {"base": torch.zeros(3, 1, 8, 8), "erased": torch.ones(3, 1, 8, 8)}
    grid = image_grid(rows, ["a", "b", "c"], cell=20, padding=2)
    label_width = grid.width - 3 * 22 - 2
    assert grid.height == 16 + 2 * 22 + 2 and label_width > 8
    assert grid.getpixel((label_width + 2 + 5, 16 + 2 + 5)) == (0, 0, 0)  # base row, first cell: black
    assert grid.getpixel((label_width + 2 + 5, 16 + 24 + 5)) == (255, 255, 255)  # erased row: white
    with pytest.raises(ValueError, match="3 columns"):
        image_grid({"x": torch.zeros(2, 1, 8, 8)}, ["a", "b", "c"])


def test_demo_runs_end_to_end_at_toy_size(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--train-steps", "5", "--steps", "2"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["denoising_loss"]) == {"base", "erased"} and summary["forget_class"] == 7
    assert Image.open(tmp_path / "grid.png").size[1] == 16 + 4 * 50 + 2  # 4 rows: 2 models x 2 seeds
    assert "forget loss" in capsys.readouterr().out
