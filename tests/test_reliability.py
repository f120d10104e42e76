"""Bad input a new user tries: every case exits 2 with one stderr line naming the problem and the fix,
no traceback, and nothing at --out, not even a hidden staging folder beside it. docs/reliability.md lists the same
cases, one row each, with the message each one gets.

A case is (id, command line, how to prepare its inputs, the message it must print). Command lines name their inputs
by placeholders ({model}: a tiny CFG UNet, or a copy of it, damaged by the case's preparation where it has one;
{ddpm}: a tiny unconditional DDPM; {sd}: a tiny Stable Diffusion; {data}, {prompts}: what the preparation wrote; {nowhere}: a path that does not
exist, so a case that names it proves the flag is refused before any model or data loads).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from erase.engine import Runtime
from erase.methods import METHODS
from erase.train import ClassifierTrainConfig, TrainConfig
from erase.cli import (ablation, attack, benchmark, benchmark_classifier, benchmark_text, demo, grid, guidance, mia,
                       sample, score, train, train_classifier, unlearn)
from erase.cli.main import main
from erase.config import field_ranges

UNLEARN = ["unlearn", "--model", "{model}", "--data", "digits", "--forget-class", "7", "--steps", "2",
           "--batch-size", "8", "--fisher-batches", "1"]
SAMPLE = ["sample", "--model", "{model}", "--classes", "0,1", "--n-per-condition", "1", "--steps", "2"]
TRAIN = ["train", "--data", "{nowhere}", "--resolution", "8", "--channels", "16,32", "--steps", "2"]
REPAIR = "re-save the model or use an intact copy"


# ---- damage done to a copy of the model folder ------------------------------------------------------------------

def truncate_file(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def truncate(model: Path) -> None:
    truncate_file(model / "unet" / "diffusion_pytorch_model.safetensors")


def random_bytes(model: Path) -> None:
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))


def bad_json(name: str):
    def damage(model: Path) -> None:
        (model / name).write_text('{"sample_size": 8,')
    return damage


def delete(name: str):
    def damage(model: Path) -> None:
        path = model / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def edit_json(name: str, change):
    def damage(model: Path) -> None:
        path = model / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return damage


def foreign_pipeline(index: dict) -> dict:
    index.pop("_erase")
    return {**index, "_class_name": "KandinskyV22Pipeline"}


def unknown_backbone(index: dict) -> dict:
    index["_erase"]["backbone"] = "kandinsky"
    return index


def unknown_prediction_type(config: dict) -> dict:
    return {**config, "prediction_type": "x_star"}


def other_widths(config: dict) -> dict:
    return {**config, "block_out_channels": [24, 48]}  # weights saved for (16, 32) no longer fit


# ---- damaged data ---------------------------------------------------------------------------------------------------

def image_folder(tmp_path: Path, sizes=((8, 8), (8, 8)), extra=None) -> Path:
    """Classes 6 and 7 ('6', '7' sorted: ids 0, 1), two images each of the given sizes; `extra(root)` damages it."""
    root = tmp_path / "data"
    for digit, size in zip(("6", "7"), sizes):
        (root / digit).mkdir(parents=True)
        for k in range(2):
            Image.new("L", size, color=40 * k).save(root / digit / f"{k}.png")
    if extra is not None:
        extra(root)
    return root


def text_file(root: Path) -> None:
    (root / "7" / "notes.txt").write_text("labels checked by hand")


def corrupt_png(root: Path) -> None:
    (root / "7" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")


def empty_class(root: Path) -> None:
    (root / "8").mkdir()


def prompt_csv(text: str):
    def prepare(tmp_path: Path, models: dict) -> dict:
        path = tmp_path / "prompts.csv"
        path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return {"prompts": path}
    return prepare


def damaged(damage, which: str = "model"):
    """A preparation that damages a copy of the `which` model ('model': the CFG UNet, 'sd': Stable Diffusion)."""
    def prepare(tmp_path: Path, models: dict) -> dict:
        copy = tmp_path / "model"
        shutil.copytree(models[which], copy, symlinks=True)
        damage(copy)
        return {which: copy}
    return prepare


def data(**kwargs):
    def prepare(tmp_path: Path, models: dict) -> dict:
        return {"data": image_folder(tmp_path, **kwargs)}
    return prepare


def data_file(tmp_path: Path, models: dict) -> dict:
    path = tmp_path / "images.npz"
    path.write_bytes(b"")
    return {"data": path}


def no_class_folders(tmp_path: Path, models: dict) -> dict:
    (tmp_path / "data" / "loose.png").parent.mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "data" / "loose.png")
    return {"data": tmp_path / "data"}


CLASS_FOLDER = ["unlearn", "--model", "{model}", "--data", "{data}", "--forget-class", "1", "--steps", "2",
                "--batch-size", "2", "--fisher-batches", "1"]
PROMPTS = ["sample", "--model", "{sd}", "--prompts", "{prompts}", "--n-per-condition", "1"]
SD_UNLEARN = ["unlearn", "--model", "{sd}", "--forget-prompt", "a cat", "--remain-prompt", "a dog", "--steps", "1"]
UNLEARN_PROMPTS = ["unlearn", "--model", "{sd}", "--forget-prompts", "{prompts}", "--remain-prompt", "a dog",
                   "--steps", "1"]
DDPM = ["unlearn", "--model", "{ddpm}", "--data", "digits", "--forget-class", "7", "--steps", "2", "--batch-size", "8"]
GRID = ["grid", "--model", "a={model}", "--classes", "0,1", "--seeds", "0", "--steps", "2"]


# ---- single-file checkpoints (erase/pipelines/single_file.py): {file} is what the preparation wrote ------------------

def small_tensors(models: dict) -> dict:
    import torch

    return {"x": torch.zeros(64)}


def ldm_tensors(change=None, unet_channels=None):
    """The tiny Stable Diffusion's weights in the original single-file layout (tests/ldm_layout.py), `change`d."""
    def tensors(models: dict) -> dict:
        from erase.pipelines.stable_diffusion import tiny_unet_condition
        from tests.conftest import tiny_stable_diffusion
        from tests.ldm_layout import ldm_state_dict

        parts = tiny_stable_diffusion(models["scratch"])
        unet = parts.denoiser if unet_channels is None else tiny_unet_condition(8, 4, 32, unet_channels)
        weights = ldm_state_dict(unet, parts.vae.vae, parts.text_encoder)
        return change(weights) if change is not None else weights
    return tensors


def single_file(name: str = "model.safetensors", tensors=small_tensors, cut: bool = False, config: bool = False):
    """A preparation writing {file} (safetensors `tensors`, cut to half its length with `cut`; any other suffix: bytes
    that must never be read) and, with `config`, an empty folder {config}."""
    def prepare(tmp_path: Path, models: dict) -> dict:
        from safetensors.torch import save_file

        path = tmp_path / name
        if path.suffix == ".safetensors":
            save_file(tensors({**models, "scratch": tmp_path / "scratch"}), path)
            if cut:
                truncate_file(path)
        else:
            path.write_bytes(b"\x80\x04never unpickled")
        if config:
            (tmp_path / "configs").mkdir()
        return {"file": path, "config": tmp_path / "configs"}
    return prepare


def without(key: str):
    return lambda weights: {k: v for k, v in weights.items() if k != key}


SD_FILE = ["unlearn", "--model", "{file}", "--model-config", "{sd}", "--forget-prompt", "a cat", "--remain-prompt",
           "a dog", "--steps", "1"]
SAMPLE_FILE = ["sample", "--model", "{file}", "--prompts", "{nowhere}", "--n-per-condition", "1"]


def with_config(argv: list[str], config: str) -> list[str]:
    at = argv.index("--model-config")
    return [*argv[: at + 1], config, *argv[at + 2 :]]

# (id, command, preparation(tmp_path, {placeholder: model folder}) -> placeholder values, message).
CASES = [
    # damaged model folders
    ("weights-truncated", UNLEARN, damaged(truncate),
     r"unet/diffusion_pytorch_model\.safetensors is truncated or not a safetensors file \(\d+ bytes where the header "
     r"describes \d+\); " + REPAIR),
    ("weights-random-bytes", SAMPLE, damaged(random_bytes),
     r"unet/diffusion_pytorch_model\.safetensors is truncated or not a safetensors file \(.*\); " + REPAIR),
    ("unet-config-invalid-json", UNLEARN, damaged(bad_json("unet/config.json")),
     r"unet/config\.json is not valid JSON \(.*\); " + REPAIR),
    ("model-index-invalid-json", SAMPLE, damaged(bad_json("model_index.json")),
     r"model_index\.json is not valid JSON \(.*\); " + REPAIR),
    ("unet-config-missing", UNLEARN, damaged(delete("unet/config.json")),
     r"unet/ has no config file \(config\.json or scheduler_config\.json\); " + REPAIR),
    ("scheduler-config-missing", SAMPLE, damaged(delete("scheduler/scheduler_config.json")),
     r"scheduler/ has no config file .*; " + REPAIR),
    ("model-index-missing", SAMPLE, damaged(delete("model_index.json")),
     r"is not a diffusers pipeline folder \(no model_index\.json\); pass a folder written by `erase train`"),
    ("unet-folder-missing", UNLEARN, damaged(delete("unet")),
     r"the unet/ folder that model_index\.json lists is missing; " + REPAIR),
    ("scheduler-folder-missing", SAMPLE, damaged(delete("scheduler")),
     r"the scheduler/ folder that model_index\.json lists is missing; " + REPAIR),
    ("unsupported-pipeline-class", UNLEARN, damaged(edit_json("model_index.json", foreign_pipeline)),
     r"holds a 'KandinskyV22Pipeline' pipeline .*; erase supports \['DDPMPipeline', 'DiTPipeline', 'FluxPipeline', "
     r"'StableDiffusion3Pipeline', 'StableDiffusionPipeline', 'StableDiffusionXLPipeline'\]: pass a model folder of "
     r"one of those"),
    ("unsupported-backbone", SAMPLE, damaged(edit_json("model_index.json", unknown_backbone)),
     r"is a 'kandinsky' model \(model_index\.json _erase\.backbone\); erase supports .*: pass a model folder of one"),
    ("unknown-prediction-type", UNLEARN, damaged(edit_json("scheduler/scheduler_config.json", unknown_prediction_type)),
     r"the scheduler's prediction_type 'x_star' is unknown; erase trains epsilon, v_prediction, sample .* and flow "
     r"matching .*: fix scheduler/scheduler_config\.json"),
    ("unknown-prediction-type-sd", SD_UNLEARN, damaged(edit_json("scheduler/scheduler_config.json",
                                                                 unknown_prediction_type), "sd"),
     r"the scheduler's prediction_type 'x_star' is unknown"),
    ("train-prompt-template-without-text", TRAIN + ["--prompt-template", "a digit"], None,
     r"--prompt-template names the prompts of --conditioning text; add --conditioning text or leave it out"),
    ("train-text-with-unet-shape-flags", TRAIN + ["--conditioning", "text", "--attention"], None,
     r"--attention and --layers-per-block shape the class-conditional UNet; .*: leave them out"),
    ("config-does-not-fit-weights", GRID, damaged(edit_json("unet/config.json", other_widths)),
     r"cannot be loaded as a cfg_unet model \(.*\); " + REPAIR),
    ("sd-vae-folder-missing", SD_UNLEARN, damaged(delete("vae"), "sd"),
     r"the vae/ folder that model_index\.json lists is missing; " + REPAIR),
    ("sd-text-encoder-weights-truncated", SD_UNLEARN,
     damaged(lambda model: truncate_file(model / "text_encoder" / "model.safetensors"), "sd"),
     r"text_encoder/model\.safetensors is truncated or not a safetensors file \(.*\); " + REPAIR),
    ("sd-tokenizer-vocab-invalid-json", SD_UNLEARN, damaged(bad_json("tokenizer/vocab.json"), "sd"),
     r"tokenizer/vocab\.json is not valid JSON \(.*\); " + REPAIR),
    ("model-folder-missing", SAMPLE, lambda tmp_path, models: {"model": tmp_path / "nowhere"},
     r"model folder '.*nowhere' does not exist; pass a diffusers model folder to --model"),
    # damaged data
    ("data-text-file", CLASS_FOLDER, data(extra=text_file),
     r"--data '.*data': 7/notes\.txt is not an image \(.*\); move it out of the class folders"),
    ("data-corrupt-png", CLASS_FOLDER, data(extra=corrupt_png),
     r"--data '.*data': 7/2\.png cannot be read as an image \(.*\); replace or remove it"),
    ("mask-on-a-method-without-one", [*UNLEARN[:-2], "--method", "ga", "--mask", "{nowhere}"], None,
     r"--mask confines the update of sfron, joint, nabla_tau, salun; ga updates every trained weight and would ignore "
     r"it: leave out --mask"),
    ("flag-of-another-method", [*UNLEARN[:-2], "--method", "ga", "--fisher-batches", "1"], None,
     r"--fisher-batches is not an option of --method ga \(it is one of sfron, joint, sa\); see 'erase unlearn "
     r"--method ga --help'"),
    ("option-that-would-be-ignored", [*UNLEARN[:-2], "--method", "nabla_tau", "--tau-every", "5"], None,
     r"--tau-every acts only with --tau-source null, heldout or auto \(the sources refreshed\) \(this run: "
     r"'relative'\), so it would be ignored: leave it out or set --tau-source"),
    ("option-a-method-never-reads", [*UNLEARN[:-2], "--method", "joint", "--forget-every", "2"], None,
     r"--forget-every is not an option of --method joint \(it is one of sfron\); see 'erase unlearn --method joint "
     r"--help'"),
    ("mask-beside-the-options-that-make-one", [*UNLEARN, "--mask", "{nowhere}"], None,
     r"--fisher-batches makes sfron's own mask, which --mask replaces, so it would be ignored: leave out one of the "
     r"two"),
    ("score-corrupt-png", ["score", "--images", "{data}", "--classifier", "digits"], data(extra=corrupt_png),
     r"--images '.*data': 7/2\.png cannot be read as an image \(.*\); replace or remove it"),
    ("data-mixed-sizes", CLASS_FOLDER, data(sizes=((8, 8), (12, 10))),
     r"--data '.*data' mixes image sizes: 6/0\.png is 8x8 but 7/0\.png is 12x10; resize every image to one size"),
    ("data-empty-class-folder", CLASS_FOLDER, data(extra=empty_class),
     r"--data '.*data': class folder 8/ holds no images; add images or remove the folder"),
    ("data-no-class-folders", CLASS_FOLDER, no_class_folders,
     r"has no class subfolders; put each class's images in its own subfolder"),
    ("data-is-a-file", CLASS_FOLDER, data_file,
     r"--data '.*images\.npz' is a file; pass a folder with one subfolder per class"),
    # damaged prompt files, given to a text-to-image model
    ("prompts-no-prompt-column", PROMPTS, prompt_csv("text,evaluation_seed\na cat,1\n"),
     r"has no 'prompt' column \(columns: text, evaluation_seed\); name the prompt column 'prompt'"),
    ("prompts-all-empty", UNLEARN_PROMPTS, prompt_csv("prompt,evaluation_seed\n  ,1\n,2\n"),
     r"every prompt is empty; write the prompts in its 'prompt' column"),
    ("prompts-empty-file", PROMPTS, prompt_csv(""),
     r"prompts\.csv' is empty; give it a 'prompt' header and one prompt per row"),
    ("prompts-header-only", UNLEARN_PROMPTS, prompt_csv("prompt,case_number\n"),
     r"holds no prompts; add rows under its 'prompt' header"),
    ("prompts-bad-seed", PROMPTS, prompt_csv("prompt,evaluation_seed\na cat,seven\n"),
     r"row 1: invalid literal for int\(\) .*; fix the evaluation_seed or evaluation_guidance value"),
    ("prompts-not-utf8", PROMPTS, prompt_csv(b"prompt\ncaf\xe9\n"),
     r"is not UTF-8 text; save it as a UTF-8 CSV"),
    ("prompts-file-missing", PROMPTS, lambda tmp_path, models: {"prompts": tmp_path / "nope.csv"},
     r"prompt file '.*nope\.csv' does not exist; pass a CSV with a 'prompt' column"),
    # methods and objectives that cannot act on an unconditional DDPM (their forget loss is exactly 0)
    ("ddpm-rl", [*DDPM, "--method", "rl"], None,
     r"--method rl cannot erase anything from this unconditional ddpm model: .* is exactly 0; use --method ga"),
    ("ddpm-salun", [*DDPM, "--method", "salun", "--saliency-batches", "1"], None,
     r"--method salun cannot erase anything from this unconditional ddpm model: .*; use --method ga"),
    ("ddpm-sfron-pseudo", [*DDPM, "--forget-objective", "pseudo"], None,
     r"--forget-objective pseudo cannot erase anything .*; use --forget-objective adaptive or ga"),
    ("ddpm-joint-pseudo", [*DDPM, "--method", "joint", "--forget-objective", "pseudo"], None,
     r"--forget-objective pseudo cannot erase anything .*; use --forget-objective adaptive or ga"),
    ("ddpm-esd", [*DDPM, "--method", "esd"], None,
     r"--method esd cannot erase anything .* negative guidance .* is exactly 0; use --method ga"),
    ("ddpm-sa-pseudo-surrogate", [*DDPM, "--method", "sa", "--surrogate", "pseudo"], None,
     r"--surrogate pseudo cannot erase anything .*; use --surrogate noise"),
    ("pseudo-anchor-nearest-on-class-model", [*UNLEARN, "--method", "sfron", "--pseudo-anchor", "nearest"], None,
     r"--pseudo-anchor nearest matches prompts by their words, and this cfg_unet model takes class ids; use "
     r"--pseudo-anchor fixed or --pseudo-class$"),
    ("pseudo-anchor-nearest-with-pseudo-random", [*SD_UNLEARN, "--pseudo-anchor", "nearest", "--pseudo-random"], None,
     r"--pseudo-anchor nearest chooses each forget prompt's anchor itself; drop --pseudo-random / --pseudo-class or "
     r"use --pseudo-anchor fixed$"),
    # single-file checkpoints: refused before any weights load, or with what diffusers could not fit
    ("single-file-pickle-ckpt", SD_FILE, single_file("model.ckpt"),
     r"--model '.*model\.ckpt' is a pickle checkpoint \(\.ckpt\); pickle checkpoints are never loaded \(they can run "
     r"code\); convert it to \.safetensors where you trust the file: .*convert_original_stable_diffusion_to_diffusers"),
    ("single-file-pickle-bin", SAMPLE_FILE, single_file("model.bin"),
     r"--model '.*model\.bin' is a pickle checkpoint \(\.bin\); pickle checkpoints are never loaded"),
    ("single-file-not-safetensors", SD_FILE, single_file("notes.txt"),
     r"--model '.*notes\.txt' is a file but not a \.safetensors checkpoint; pass a diffusers model folder, or a "
     r"single-file checkpoint \(\.safetensors\) with --model-config"),
    ("single-file-without-model-config", SD_FILE[:3] + SD_FILE[5:], single_file(),
     r"--model '.*model\.safetensors' is a single-file checkpoint: pass --model-config DIR, a local diffusers folder "
     r"of the same family"),
    ("single-file-truncated", SD_FILE, single_file(cut=True),
     r"--model '.*model\.safetensors' is truncated or not a safetensors file \(\d+ bytes where the header describes "
     r"\d+\); download it again or use an intact copy"),
    ("single-file-missing", SD_FILE[:2] + ["{nowhere}"] + SD_FILE[3:], None,
     r"--model '.*nowhere' does not exist; pass a diffusers model folder, or a \.safetensors checkpoint file with "
     r"--model-config"),
    ("single-file-model-config-with-a-folder", SD_FILE[:2] + ["{sd}"] + SD_FILE[3:], None,
     r"--model-config applies to a single-file checkpoint, and --model '.*' is a folder \(it has its own configs\); "
     r"leave --model-config out"),
    ("single-file-config-missing", with_config(SD_FILE, "{nowhere}"), single_file(),
     r"--model-config '.*nowhere' is not a folder; pass a local diffusers folder"),
    ("single-file-config-not-diffusers", with_config(SD_FILE, "{config}"), single_file(config=True),
     r"--model-config '.*configs' is not a diffusers pipeline folder \(no model_index\.json\); pass a local "
     r"diffusers folder of the checkpoint's family"),
    ("single-file-config-unsupported-class", with_config(SD_FILE, "{model}"), single_file(),
     r"--model-config '.*' holds a 'DDPMPipeline' pipeline \(model_index\.json _class_name\); erase reads "
     r"single-file checkpoints of \[.*'StableDiffusionPipeline'.*\]: pass a folder of one of those"),
    ("single-file-not-original-layout", SD_FILE, single_file(),
     r"--model '.*model\.safetensors' cannot be read as a StableDiffusionPipeline checkpoint with the configs of "
     r"--model-config '.*' \(Failed to load CLIPTextModel\. Weights for this component appear to be missing in the "
     r"checkpoint\.\); pass a file in the original single-file layout"),
    ("single-file-other-size", SD_FILE, single_file(tensors=ldm_tensors(unet_channels=(16, 32))),
     r"cannot be read as a StableDiffusionPipeline checkpoint with the configs of --model-config '.*' \(.*expected "
     r"shape .*\); pass a file in the original single-file layout holding every component, and a folder of its own"),
    ("single-file-tensor-missing", SD_FILE,
     single_file(tensors=ldm_tensors(without("cond_stage_model.transformer.text_model.final_layer_norm.weight"))),
     r"--model '.*model\.safetensors' holds no weights for 1 tensor of the text_encoder that --model-config '.*' "
     r"describes \(e\.g\. 'final_layer_norm\.weight'\); pass a folder of the file's own model family and size"),
]

# Numeric flags outside their range. Every field that declares a "range" (the config of each method, TrainConfig,
# Runtime) and every plain flag in a command's RANGES dict gets a case, with a value just below its interval, so a
# flag added later is covered without a new line here. Commands naming {nowhere} as their model, images or data
# prove the flag is refused before anything loads.


def outside(interval: str) -> str:
    """A value just outside `interval`, below its lower end: '[1, inf)' -> '0', '(0, inf)' -> '0', '[0, 1)' -> '-1'."""
    bracket, low = interval[0], interval[1:].split(",")[0].strip()
    return low if bracket == "(" else str(int(low) - 1)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def method_range_cases():
    """(command, argv, (flag, value)) for each ranged config field of erase unlearn and erase train, once per flag."""
    seen = set()
    for method, (_, config_class) in METHODS.items():
        argv = ["unlearn", "--model", "{model}", "--data", "digits", "--forget-class", "7", "--method", method,
                "--steps", "1", "--batch-size", "2"]
        for name, interval in {**field_ranges(config_class), **field_ranges(Runtime)}.items():
            if name not in seen:
                seen.add(name)
                yield "unlearn", argv, (flag(name), outside(interval))
    for name, interval in {**field_ranges(TrainConfig), **field_ranges(Runtime)}.items():
        yield "train", TRAIN, (flag(name), outside(interval))
    for name, interval in field_ranges(ClassifierTrainConfig).items():
        yield "train-classifier", ["train-classifier", "--data", "{nowhere}"], (flag(name), outside(interval))


PLAIN_FLAG_COMMANDS = {  # each command's RANGES with the command line its cases extend
    "sample": (sample.RANGES, ["sample", "--model", "{nowhere}", "--classes", "0"]),
    "grid": (grid.RANGES, ["grid", "--model", "a={nowhere}", "--classes", "0"]),
    "guidance": (guidance.RANGES, ["guidance", "--model", "{nowhere}"]),
    "score": (score.RANGES, ["score", "--images", "{nowhere}", "--classifier", "digits"]),
    "demo": (demo.RANGES, ["demo", "--model", "{nowhere}"]),
    "ablation": (ablation.RANGES, ["ablation", "--model", "{nowhere}"]),
    "benchmark": (benchmark.RANGES, ["benchmark", "--model", "{nowhere}"]),
    "unlearn": (unlearn.RANGES, ["unlearn", "--model", "{nowhere}", "--forget-class", "1"]),
    "train": (train.RANGES, ["train", "--data", "{nowhere}"]),
    "train-classifier": (train_classifier.RANGES, ["train-classifier", "--data", "{nowhere}"]),
    "benchmark-classifier": (benchmark_classifier.RANGES, ["benchmark-classifier"]),
    "benchmark-text": (benchmark_text.RANGES, ["benchmark-text", "--model", "{nowhere}"]),
    "mia": (mia.RANGES, ["mia", "--models", "{nowhere}", "--forget-class", "1"]),
    "attack": (attack.RANGES, ["attack", "--model", "{nowhere}", "--forget-class", "1"]),
}
RANGE_CASES = [
    *method_range_cases(),
    *((command, argv, (flag(name), outside(interval)))
      for command, (ranges, argv) in PLAIN_FLAG_COMMANDS.items() for name, interval in ranges.items()),
]
RANGE_EXTRAS = [  # values the generated cases do not try, and flags checked outside check_ranges
    ("unlearn", UNLEARN, ("--lr", "nan"), "--lr must be greater than 0, got nan"),
    ("unlearn", UNLEARN, ("--lr", "inf"), "--lr must be greater than 0, got inf"),
    ("unlearn", [*UNLEARN[:-2], "--method", "salun"], ("--mask-fraction", "1.5"),
     r"--mask-fraction must be in \(0, 1\], got 1.5"),
    ("unlearn", [*UNLEARN[:-2], "--method", "nabla_tau"], ("--alpha", "2"), r"--alpha must be in \(0, 1\], got 2.0"),
    ("unlearn", UNLEARN, ("--remain-label-dropout", "1"), r"--remain-label-dropout must be in \[0, 1\), got 1.0"),
    ("train", TRAIN, ("--ema-decay", "1"), r"--ema-decay must be in \[0, 1\), got 1.0"),
    ("guidance", ["guidance", "--model", "{nowhere}"], ("--scales", "1,-2"),
     r"--scales '1,-2': every guidance scale must be at least 0"),
    ("score", ["score", "--images", "{nowhere}", "--classifier", "digits"], ("--threshold", "1.5"),
     r"--threshold must be in \[0, 1\], got 1.5"),
    ("unlearn", UNLEARN, ("--steps", "abc"), r"argument --steps: invalid int value: 'abc'; see 'erase unlearn --help'"),
    ("unlearn", UNLEARN, ("--method", "nope"), r"argument --method: invalid choice: 'nope' .*; see 'erase unlearn --help'"),
]


def with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """`argv` with `flag` set to `value`: replaced where the command already gives it, else appended."""
    if flag in argv:
        at = argv.index(flag)
        return [*argv[: at + 1], value, *argv[at + 2 :]]
    return [*argv, flag, value]


ALL_CASES = [
    *CASES,
    *((f"range-{command}-{name[2:]}={value}", with_flag(argv, name, value), None,
       rf"{name} must be .+, got {re.escape(value)}(\.0)?$") for command, argv, (name, value) in RANGE_CASES),
    *((f"range-{command}-{name[2:]}={value}", with_flag(argv, name, value), None, message)
      for command, argv, (name, value), message in RANGE_EXTRAS),
]


@pytest.fixture(scope="module")
def cfg_model_dir(tmp_path_factory) -> Path:
    """An untrained class-conditional 8x8 CFG UNet: every case fails before sampling or training, so weights that
    took no training serve and cost no time."""
    from tests.conftest import tiny_adapter

    directory = tmp_path_factory.mktemp("models") / "cfg"
    tiny_adapter().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sd_model_dir(tmp_path_factory) -> Path:
    """An untrained tiny Stable Diffusion folder (CLIP text encoder, VAE, UNet): a model that takes prompts."""
    from tests.conftest import tiny_stable_diffusion

    directory = tmp_path_factory.mktemp("models")
    tiny_stable_diffusion(directory).save_pretrained(directory / "sd")
    return directory / "sd"


@pytest.fixture(scope="module")
def ddpm_model_dir(tmp_path_factory) -> Path:
    """An untrained unconditional 8x8 DDPM: the conditions it is given change nothing."""
    import torch

    from erase.pipelines.ddpm import DDPMAdapter

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("models") / "ddpm"
    DDPMAdapter.create(8, (16, 32), 1).save_pretrained(directory)
    return directory


OUTPUT = {"grid": ("--out", "grid.png"), "score": ("--out", "scores.json"), "attack": ("--out", "attack.json"), "guidance": ("--json", "sweep.json")}


def output(argv: list[str]) -> tuple[str, str]:
    """(flag, name) of what the command writes: a file for grid, score and guidance, else a folder."""
    return OUTPUT.get(argv[0], ("--out", "out"))


def run_case(argv, prepare, tmp_path, models: dict, capsys):
    """(exit code, stderr, --out path) of one case run through `erase` as a user would."""
    values = {**models, "nowhere": tmp_path / "nowhere"}
    if prepare is not None:
        values.update(prepare(tmp_path, models))
    flag, name = output(argv)
    out = tmp_path / name
    command = [a.format(**values) for a in argv] + [flag, str(out)]
    capsys.readouterr()  # what fixtures printed (e.g. transformers' import-time warnings) is not the case's
    code = main(command)
    return code, capsys.readouterr().err, out


@pytest.mark.parametrize("argv, prepare, message", [c[1:] for c in ALL_CASES], ids=[c[0] for c in ALL_CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argv, prepare, message, tmp_path, cfg_model_dir,
                                                            ddpm_model_dir, sd_model_dir, capsys):
    models = {"model": cfg_model_dir, "ddpm": ddpm_model_dir, "sd": sd_model_dir}
    code, err, out = run_case(argv, prepare, tmp_path, models, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"erase {argv[0]}: error: "), err
    assert "Traceback" not in err
    assert re.search(message, err, flags=re.M), err
    assert not out.exists(), "nothing may be written at --out"
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "a staging folder was left"


def test_every_case_is_a_row_of_docs_reliability_md():
    """The document lists exactly the cases tested here, one row each."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "reliability.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|", doc, flags=re.M)
    ids = [case[0] for case in ALL_CASES]
    assert len(set(ids)) == len(ids) and sorted(rows) == sorted(ids)
