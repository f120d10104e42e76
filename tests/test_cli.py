"""The `erase` command end to end on a tiny model, and every bad input the foundation issue lists."""

import argparse
import json
import re
import subprocess
import sys

import pytest
import torch
from diffusers import UNet2DModel

from erase.engine import Runtime
from erase.methods import METHODS, option_names
from erase.train import TrainConfig
from erase.cli.main import SUBCOMMANDS, build_parser, main
from tests.conftest import tree_digest

UNLEARN = ["unlearn", "--data", "digits", "--steps", "3", "--batch-size", "16", "--fisher-batches", "2"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_unlearn_end_to_end_writes_a_diffusers_model_mask_and_record(trained_model_dir, tmp_path, capsys):
    before = tree_digest(trained_model_dir)
    out = tmp_path / "erased"
    code, err = run_cli(capsys, *UNLEARN, "--model", trained_model_dir, "--forget-class", "7", "--out", out)
    assert code == 0, err
    assert tree_digest(trained_model_dir) == before, "the input checkpoint was modified"
    assert {p.name for p in out.iterdir()} == {
        "model_index.json", "unet", "scheduler", "mask.safetensors", "run.json",
        "config.json", "diffusion_pytorch_model.safetensors",  # links into unet/
    }
    unet = UNet2DModel.from_pretrained(out)
    original = UNet2DModel.from_pretrained(trained_model_dir, subfolder="unet")
    assert any(not torch.equal(a, b) for a, b in zip(unet.parameters(), original.parameters()))
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["steps"] == 3 and record["runtime"]["seed"] == 0
    assert set(record["timings"]) == {"fisher", "mask", "unlearn"}
    config = record["config"]  # the preset: a forget step on each of the first N iterations, then every k-th
    forget_steps = sum(s < config["forget_dense"] or s % config["forget_every"] == 0 for s in range(3))
    assert len(record["losses"]["forget"]["value"]) == forget_steps and len(record["losses"]["remain"]["value"]) == 3
    assert 0 < record["mask_sparsity"]["overall"] < 1 and record["mask_sparsity"]["per_module"]
    assert record["environment"]["packages"]["diffusers"] and record["device"] == "cpu"
    info = json.loads((out / "model_index.json").read_text())["_erase"]
    assert info["erased"]["forget_classes"] == [7]

    again = tmp_path / "reused"  # the saved mask skips the Fisher phase (so --fisher-batches would be refused)
    code, err = run_cli(capsys, *UNLEARN[:-2], "--model", trained_model_dir, "--forget-class", "7",
                        "--mask", out / "mask.safetensors", "--out", again)
    assert code == 0, err
    assert "fisher" not in json.loads((again / "run.json").read_text())["timings"]


def test_train_excludes_classes_and_records_the_recipe(tmp_path, capsys):
    out = tmp_path / "retrained"
    code, err = run_cli(capsys, "train", "--data", "digits", "--resolution", "8", "--channels", "16,32", "--steps", "3",
                        "--exclude-classes", "7", "--ema-decay", "0.9", "--out", out)
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["excluded_classes"] == [7] and record["train_images"] == 1797 - 179
    info = json.loads((out / "model_index.json").read_text())["_erase"]
    assert info["excluded_classes"] == [7] and info["weights"].startswith("ema")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--forget-class", "12"], r"class ids \[12\] do not exist; this model has classes 0-9"),
        (["--forget-class", "7", "--pseudo-class", "7", "--forget-objective", "pseudo"], "not a remaining class"),
        (["--forget-class", "x"], "cannot read class ids"),
        (["--forget-class", "7", "--steps", "0"], "--steps must be at least 1"),
        (["--forget-class", "7", "--data", "nowhere"], "unknown data source"),
    ],
)
def test_bad_unlearn_arguments_exit_2_with_the_fix(trained_model_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code, err = run_cli(capsys, *UNLEARN, "--model", trained_model_dir, *argv, "--out", out)
    assert code == 2 and err.count("\n") == 1
    assert re.search(message, err), err
    assert not out.exists() and not list(tmp_path.glob(".out*")), "nothing may be half-written"


def test_missing_and_non_diffusers_model_folders(tmp_path, capsys):
    code, err = run_cli(capsys, *UNLEARN, "--model", tmp_path / "missing", "--forget-class", "7", "--out", tmp_path / "o")
    assert code == 2 and "does not exist" in err
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "weights.bin").write_bytes(b"0")
    code, err = run_cli(capsys, *UNLEARN, "--model", tmp_path / "notamodel", "--forget-class", "7", "--out", tmp_path / "o")
    assert code == 2 and "not a diffusers pipeline folder" in err


def test_output_folder_rules(trained_model_dir, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    code, err = run_cli(capsys, *UNLEARN, "--model", trained_model_dir, "--forget-class", "7", "--out", taken)
    assert code == 2 and "exists and is not empty" in err and "--overwrite" in err
    assert (taken / "keep.txt").read_text() == "mine"

    before = tree_digest(trained_model_dir)
    for out in (trained_model_dir, trained_model_dir / "inside"):
        code, err = run_cli(capsys, *UNLEARN, "--model", trained_model_dir, "--forget-class", "7", "--out", out, "--overwrite")
        assert code == 2 and "overlaps the input" in err
    assert tree_digest(trained_model_dir) == before

    code, err = run_cli(capsys, *UNLEARN, "--model", trained_model_dir, "--forget-class", "7", "--out", taken, "--overwrite")
    assert code == 0, err
    assert not (taken / "keep.txt").exists() and (taken / "run.json").is_file()


def test_empty_forget_set_is_refused(trained_model_dir, tmp_path, capsys):
    from PIL import Image

    for digit in ("0", "1"):  # a user's folder with two classes: class 7 exists in the model but has no images
        (tmp_path / "data" / digit).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "data" / digit / "a.png")
    code, err = run_cli(capsys, *UNLEARN[:-6], "--steps", "1", "--data", tmp_path / "data", "--model", trained_model_dir,
                        "--forget-class", "7", "--out", tmp_path / "o")
    assert code == 2 and "have no images" in err and not (tmp_path / "o").exists()


def test_non_finite_loss_exits_2_naming_the_step_and_writes_nothing(trained_model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    code, err = run_cli(capsys, *UNLEARN[:-4], "--steps", "20", "--log-every", "5", "--batch-size", "16",
                        "--fisher-batches", "1", "--lr", "1e30", "--max-grad-norm", "none",
                        "--model", trained_model_dir, "--forget-class", "7", "--out", out)
    assert code == 2 and "non-finite at step" in err
    assert not out.exists() and not list(tmp_path.glob(".o.*"))


def test_every_flag_is_described_in_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(SUBCOMMANDS) == set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and action.help.strip(), f"erase {name} {action.option_strings[0]} has no help"
    for method, (_, config_class) in METHODS.items():  # each method's --help: its own flags and the runtime's, only
        argv = ["unlearn", "--method", method]
        sub = build_parser(argv)._subparsers._group_actions[0].choices["unlearn"]
        unlearn_help = sub.format_help()
        flags = {flag for action in sub._actions if action.help != argparse.SUPPRESS for flag in action.option_strings
                 if flag in unlearn_help}  # the flags --help lists
        for field in [*option_names(method), *Runtime.__dataclass_fields__]:
            assert "--" + field.replace("_", "-") in flags, (method, field)
        others = {f for _, c in METHODS.values() for f in c.__dataclass_fields__} - set(option_names(method))
        assert not {"--" + f.replace("_", "-") for f in others} & flags, method
    train_help = commands["train"].format_help()
    assert all("--" + f.replace("_", "-") in train_help for f in TrainConfig.__dataclass_fields__)


def test_console_command_reports_usage_errors_with_exit_2(tmp_path):
    erase = [sys.executable, "-m", "erase"]
    assert subprocess.run([*erase, "--help"], capture_output=True).returncode == 0
    bad = subprocess.run([*erase, "unlearn", "--model", str(tmp_path / "nope"), "--forget-class", "7",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("erase unlearn: error:")
    assert subprocess.run([*erase, "unlearn"], capture_output=True).returncode == 2  # argparse: missing flags


def test_torchvision_is_not_installed():
    """torchvision cannot load on CPU-only machines and breaks transformers/diffusers imports."""
    import importlib.util

    assert importlib.util.find_spec("torchvision") is None


def test_the_backbone_preset_applies_under_given_flags_and_run_json_records_it(trained_model_dir, tmp_path, capsys):
    from erase.methods.sfron import SFRON_PRESETS

    out = tmp_path / "auto"
    code, err = run_cli(capsys, *UNLEARN, "--model", trained_model_dir, "--forget-class", "7", "--lr", "3e-4",
                        "--out", out)
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["preset"]["name"] == "cfg_unet" and record["preset"]["values"] == SFRON_PRESETS["cfg_unet"]
    assert record["config"]["lr"] == 3e-4  # a given flag wins over the preset
    for name, value in SFRON_PRESETS["cfg_unet"].items():
        if f"--{name.replace('_', '-')}" not in UNLEARN and name != "lr":
            assert record["config"][name] == value, name
    code, err = run_cli(capsys, *UNLEARN, "--model", trained_model_dir, "--forget-class", "7", "--preset", "none",
                        "--out", tmp_path / "none")
    assert code == 0, err
    assert json.loads((tmp_path / "none" / "run.json").read_text())["preset"] == {"name": None, "values": {}}
    code, err = run_cli(capsys, *UNLEARN, "--model", trained_model_dir, "--forget-class", "7", "--preset", "nope",
                        "--out", tmp_path / "bad")
    assert code == 2 and "--preset 'nope'" in err and "'dit'" in err


def test_steps_none_reaches_nabla_tau_through_its_own_flag_type(tmp_path, capsys):
    """Each method's flags carry its own types: Nabla-tau's --steps is optional ('none' = --remain-epochs passes
    over the remain set), while SFR-on's is an int; before, one flag per name took the first method's type."""
    from erase.data import load_dataset
    from erase.pipelines import load_adapter
    from tests.conftest import tiny_adapter

    tiny_adapter().save_pretrained(tmp_path / "base")
    argv = ["unlearn", "--model", tmp_path / "base", "--method", "nabla_tau", "--steps", "none", "--remain-epochs",
            "0.1", "--batch-size", "32", "--tau-samples", "8", "--data", "digits", "--forget-class", "7",
            "--out", tmp_path / "out"]
    assert main(argv) == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    channels, _, resolution = load_adapter(tmp_path / "base").image_shape
    remain = int((load_dataset("digits", resolution, channels).labels != 7).sum())
    assert record["config"]["steps"] is None
    assert len(record["losses"]["forget"]["step"]) == -(-remain // 10 // 32)  # ceil(0.1 x remain / 32)
    code = main(["unlearn", "--model", tmp_path / "base", "--method", "sfron", "--steps", "none", "--out", tmp_path / "o"])
    assert code == 2 and "invalid int value: 'none'" in capsys.readouterr().err
