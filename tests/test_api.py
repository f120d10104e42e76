"""The Python API (`erase.unlearn`, `erase.sample`, `erase.grid`, `erase.score`) through public names only: on
in-memory diffusers objects and on the shipped digit model, with plain diffusers reloading what it returns."""

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import erase
from tests.conftest import tiny_stable_diffusion, tree_digest

FAST = dict(steps=2, fisher_batches=1, batch_size=4)  # SFR-on options, as `erase unlearn` flags take them


def state(module: torch.nn.Module) -> dict:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def tiny_sd_pipeline(tmp_path):
    """A StableDiffusionPipeline built in memory from random-init tiny components (16 px, CLIP 32-d)."""
    from diffusers import StableDiffusionPipeline

    parts = tiny_stable_diffusion(tmp_path)
    return StableDiffusionPipeline(vae=parts.vae.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.denoiser, scheduler=parts.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def test_erase_a_prompt_from_an_in_memory_stable_diffusion_pipeline(tiny_sd_pipeline, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = tiny_sd_pipeline
    before = state(pipe.unet)
    erased, record = erase.unlearn(pipe, forget="a photo of a cat", remain=["a photo of a dog"], method="sfron",
                                   images_per_condition=2, generation_steps=2, **FAST)

    assert type(erased) is StableDiffusionPipeline and erased is not pipe
    assert same(state(pipe.unet), before)  # the caller's pipeline is untouched
    assert not same(state(erased.unet), before)  # the returned one was trained
    assert erased.text_encoder is pipe.text_encoder and erased.vae is pipe.vae  # frozen parts are shared, not copied
    assert record["forget"] == ["a photo of a cat"] and record["remain"] == ["a photo of a dog"]
    assert record["model"] == "in-memory StableDiffusionPipeline" and record["method"] == "sfron"
    assert json.loads(json.dumps(record)) == record  # JSON as it stands

    # plain diffusers samples the returned pipeline
    picture = erased("a photo of a cat", num_inference_steps=2, guidance_scale=1.0, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images
    assert picture.shape == (1, 16, 16, 3) and bool((picture >= 0).all() and (picture <= 1).all())
    # and erase samples it, seeded per image
    images, samples = erase.sample(erased, prompts=["a photo of a cat"], n_per_condition=2, steps=2)
    assert images.shape == (2, 3, 16, 16) and [r["seed"] for r in samples["images"]] == [0, 1]

    erased.save_pretrained(tmp_path / "saved")
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert same(state(reloaded.unet), state(erased.unet))
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_erase"]["erased"]["forget_prompts"] == ["a photo of a cat"]
    # erase reads the saved folder back as the same model: identical samples from the folder and the object
    again, _ = erase.sample(tmp_path / "saved", prompts=["a photo of a cat"], n_per_condition=2, steps=2)
    assert torch.allclose(again, images, atol=1e-5)


def test_erase_a_digit_from_the_shipped_model_loaded_with_plain_diffusers(tmp_path):
    from diffusers import DDPMPipeline

    shipped = tree_digest(erase.SHIPPED_MODEL)
    pipe = DDPMPipeline.from_pretrained(erase.SHIPPED_MODEL)  # plain diffusers drops `_erase` from the config
    stored = json.loads((erase.SHIPPED_MODEL / "model_index.json").read_text())["_erase"]
    erased, record = erase.unlearn(pipe, forget=7, data="digits", **FAST)

    assert type(erased) is DDPMPipeline and record["forget"] == [7] and record["backbone"] == "cfg_unet"
    assert record["preset"]["name"] == "cfg_unet"  # the backbone's preset applies, as on the command line
    assert erased.config["_erase"]["guidance_scale"] == stored["guidance_scale"]  # read back from the folder
    assert erased.config["_erase"]["erased"]["forget_classes"] == [7]
    images, samples = erase.sample(erased, classes="6-7", n_per_condition=2, steps=3)
    assert images.shape == (4, 1, 16, 16) and [r["condition"] for r in samples["images"]] == [6, 6, 7, 7]
    assert samples["images"][0]["guidance_scale"] == stored["guidance_scale"]

    erased.save_pretrained(tmp_path / "saved")
    reloaded = DDPMPipeline.from_pretrained(tmp_path / "saved")
    assert same(state(reloaded.unet), state(erased.unet)) and not same(state(reloaded.unet), state(pipe.unet))
    again, _ = erase.sample(tmp_path / "saved", classes="6-7", n_per_condition=2, steps=3)
    assert torch.allclose(again, images, atol=1e-5)
    assert tree_digest(erase.SHIPPED_MODEL) == shipped  # never touched


def test_a_folder_gives_a_pipeline_and_out_writes_the_folder_the_command_writes(tmp_path):
    from diffusers import DDPMPipeline

    erased, record = erase.unlearn(erase.SHIPPED_MODEL, forget=[1, 3], data="digits", out=tmp_path / "api", **FAST)
    assert type(erased) is DDPMPipeline
    assert json.loads((tmp_path / "api" / "run.json").read_text()) == record  # the record is run.json

    command = [sys.executable, "-m", "erase", "unlearn", "--model", str(erase.SHIPPED_MODEL), "--forget-class", "1,3",
               "--data", "digits", "--steps", "2", "--fisher-batches", "1", "--batch-size", "4", "--out",
               str(tmp_path / "cli")]
    subprocess.run(command, check=True, capture_output=True)
    from_cli = json.loads((tmp_path / "cli" / "run.json").read_text())
    varying = {"started", "timings", "environment"}  # wall clock and the process's own command line
    for run in (from_cli, record):  # peak memory is the process's own too; what the run held is not
        assert run["memory"]["phases"].keys() == {"data", "fisher", "mask", "unlearn"}
        del run["memory"]["phases"]
    for run, name in ((from_cli, "cli"), (record, "api")):  # resumable states go beside each run's own --out
        assert run["runtime"].pop("checkpoint_dir") == str(tmp_path / f"{name}.checkpoint")
    assert from_cli.keys() == record.keys()
    assert {k: v for k, v in from_cli.items() if k not in varying} == {k: v for k, v in record.items() if k not in varying}
    cli_weights = tmp_path / "cli" / "unet" / "diffusion_pytorch_model.safetensors"
    api_weights = tmp_path / "api" / "unet" / "diffusion_pytorch_model.safetensors"
    assert cli_weights.read_bytes() == api_weights.read_bytes()  # one code path: the same weights bit for bit


def test_inplace_trains_the_given_object_and_a_pair_comes_back_as_a_pair():
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(erase.SHIPPED_MODEL)
    before = state(pipe.unet)
    erased, _ = erase.unlearn((pipe.unet, pipe.scheduler), forget=7, data="digits", **FAST)
    assert isinstance(erased, tuple) and erased[1] is pipe.scheduler and erased[0] is not pipe.unet
    assert same(state(pipe.unet), before)
    erased, _ = erase.unlearn(pipe, forget=7, data="digits", inplace=True, **FAST)
    assert erased.unet is pipe.unet and not same(state(pipe.unet), before)


def test_score_of_a_tensor_equals_score_of_the_folder_its_record_came_with(tmp_path):
    images, record = erase.sample(erase.SHIPPED_MODEL, classes=[0, 1], n_per_condition=3, steps=4, out=tmp_path / "s")
    assert json.loads((tmp_path / "s" / "index.json").read_text()) == record
    from_tensor = erase.score(images, record, classifier="digits", forget=1)
    from_folder = erase.score(tmp_path / "s", classifier="digits", forget=1, out=tmp_path / "scores.json")
    assert json.loads((tmp_path / "scores.json").read_text()) == from_folder
    assert from_tensor["classifier"] == from_folder["classifier"]
    assert from_folder["forget_classes"] == from_tensor["forget_classes"] == [1]
    picture, grid_record = erase.grid({"a": erase.SHIPPED_MODEL, "b": erase.SHIPPED_MODEL}, classes="0-2", seeds=[5],
                                      steps=2, cell=16)
    assert grid_record["rows"] == 2 and len(grid_record["columns"]) == 3 and picture.width > 3 * 16


@pytest.mark.parametrize("call, error, words", [
    (lambda: erase.unlearn(erase.SHIPPED_MODEL, forget=7, lr=-1), erase.OptionError, "lr must be greater than 0"),
    (lambda: erase.unlearn(erase.SHIPPED_MODEL, forget=7, lrr=1e-4), erase.OptionError, "did you mean lr?"),
    (lambda: erase.unlearn(erase.SHIPPED_MODEL, forget=7, method="ga", forget_alpha=1), erase.OptionError,
     "forget_alpha is not an option of method ga"),
    (lambda: erase.unlearn(erase.SHIPPED_MODEL, forget="a cat"), erase.DataError, "cannot read class ids"),
    (lambda: erase.unlearn(erase.SHIPPED_MODEL, forget=12), erase.OptionError, "class ids [12] do not exist"),
    (lambda: erase.unlearn(erase.SHIPPED_MODEL), erase.OptionError, "name what to erase: forget=[class ids]"),
    (lambda: erase.unlearn(erase.SHIPPED_MODEL, forget=[7, Path("nsfw.csv")]), erase.OptionError,
     "name what to erase: forget=[class ids]"),  # class ids and prompts together
    (lambda: erase.unlearn("no/such/folder", forget=7), erase.ModelError, "pass a diffusers model folder to model"),
    (lambda: erase.unlearn(torch.nn.Linear(2, 2), forget=7), erase.ModelError, "cannot erase from a Linear"),
    (lambda: erase.unlearn(erase.SHIPPED_MODEL, forget=7, out=erase.SHIPPED_MODEL / "unet"), erase.OutputError,
     "overlaps the input"),
    (lambda: erase.sample(erase.SHIPPED_MODEL, prompts=["a cat"]), erase.OptionError,
     "takes class ids, not prompts; use classes"),
    (lambda: erase.score(torch.zeros(2, 1, 16, 16)), erase.OptionError, "nothing to score"),
    (lambda: erase.unlearn(erase.SHIPPED_MODEL, forget=7, method="nabla_tau", tau_source="value", data="digits"),
     erase.OptionError, "tau_source value needs tau_value"),  # checked inside the method, after the data loads
])
def test_api_errors_are_typed_name_python_keywords_and_never_exit(call, error, words):
    with pytest.raises(erase.EraseError) as raised:  # SystemExit is no EraseError: pytest would report it
        call()
    assert isinstance(raised.value, error) and isinstance(raised.value, erase.UsageError), type(raised.value)
    assert words in str(raised.value) and "--" not in str(raised.value).split(";")[0], str(raised.value)


def test_method_configs_are_typed_and_document_the_flags_defaults_and_help():
    from erase.cli.main import build_parser
    from erase.methods import METHODS, NablaTauConfig, SFRonConfig, option_names

    assert METHODS["sfron"][1] is SFRonConfig and METHODS["nabla_tau"][1] is NablaTauConfig
    hints = typing.get_type_hints(SFRonConfig)
    assert hints["lr"] is float and hints["steps"] is int
    for name, (_, config) in METHODS.items():
        argv = ["unlearn", "--method", name]
        unlearn_help = build_parser(argv)._subparsers._group_actions[0].choices["unlearn"].format_help()
        unlearn_help = " ".join(unlearn_help.split())
        for field in dataclasses.fields(config):
            flag = f"--{field.name.replace('_', '-')}"
            assert (flag in unlearn_help) == (field.name in option_names(name)), (name, flag)
            line = next(line for line in config.__doc__.splitlines() if line.strip().startswith(f"{field.name} ("))
            assert f"default {field.default!r}" in line, (name, line)
            assert " ".join(field.metadata.get("help", "").split()) in " ".join(line.split()), (name, field.name)


def test_an_in_memory_dit_pipeline_comes_back_as_one_that_plain_diffusers_samples(tmp_path):
    from diffusers import DDPMScheduler, DiTPipeline

    from erase.pipelines.dit import tiny_dit
    from erase.pipelines.latent import tiny_vae

    torch.manual_seed(0)
    pipe = DiTPipeline(transformer=tiny_dit(), vae=tiny_vae(), scheduler=DDPMScheduler(num_train_timesteps=1000),
                       id2label={0: "tench, Tinca tinca", 1: "goldfish"})
    erased, record = erase.unlearn(pipe, forget=1, remain=[0, 2], data="generated", images_per_condition=1,
                                   generation_steps=2, **FAST)
    assert type(erased) is DiTPipeline and erased.labels == pipe.labels and erased.vae is pipe.vae
    assert record["forget"] == [1] and record["remain"] == [0, 2] and record["data"]["folder"] is None
    pictures = erased(class_labels=[1], num_inference_steps=2, guidance_scale=1.0, output_type="np").images
    assert pictures.shape == (1, 8, 8, 3)
    erased.save_pretrained(tmp_path / "dit")
    assert DiTPipeline.from_pretrained(tmp_path / "dit").transformer.config.num_layers == 2


def test_half_precision_weights_are_refused_for_training_not_silently_trained():
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(erase.SHIPPED_MODEL, torch_dtype=torch.float16)
    with pytest.raises(erase.ModelError, match="holds torch.float16 weights; erase trains float32"):
        erase.unlearn(pipe, forget=7, data="digits", **FAST)


SMALL = {"sfron": {"fisher_batches": 1}, "joint": {"fisher_batches": 1}, "salun": {"saliency_batches": 1},
         "nabla_tau": {"tau_samples": 8}, "ga": {}, "rl": {}, "esd": {"ddim_steps": 2}, "sa": {}}


@pytest.mark.parametrize("method", sorted(SMALL))
def test_a_given_mask_confines_the_update_or_is_refused(tmp_path, method):
    """--mask is never accepted and then ignored: the methods that read a mask change their run with it (an all-zero
    mask against none), the others refuse it in one line before anything loads."""
    from safetensors.torch import save_file

    from erase.errors import OptionError
    from erase.methods import MASK_OPTIONS, MASKED
    from tests.conftest import tiny_adapter

    tiny_adapter().save_pretrained(tmp_path / "base")
    zeros = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in
             erase.pipelines.load_adapter(tmp_path / "base").denoiser.named_parameters()}
    save_file(zeros, str(tmp_path / "zeros.safetensors"))
    common = dict(forget=7, method=method, steps=2, batch_size=8, data="digits", **SMALL[method])
    if method not in MASKED:
        with pytest.raises(OptionError, match="updates every trained weight and would ignore it"):
            erase.unlearn(tmp_path / "nowhere", mask=tmp_path / "zeros.safetensors", **common)
        return
    free, _ = erase.unlearn(tmp_path / "base", **common)
    own_mask = MASK_OPTIONS[method]  # they make the mask a given one replaces, so they are refused beside it
    confined, record = erase.unlearn(tmp_path / "base", mask=tmp_path / "zeros.safetensors",
                                     **{k: v for k, v in common.items() if k not in own_mask})
    assert record["mask_from"] == str(tmp_path / "zeros.safetensors")
    assert not same(state(free.unet), state(confined.unet))


def test_retain_is_the_deprecated_name_of_remain_in_the_api_and_on_the_command_line(capsys):
    """One word for the kept set: "remain". The old spellings still work for a release and say so in one line."""
    from erase.cli.main import build_parser

    argv = ["unlearn", "--model", "m", "--forget-prompt", "a cat", "--retain-prompt", "a dog", "--remain-prompt",
            "a cow", "--retain-prompts", "keep.csv", "--out", "o"]
    args = build_parser(argv).parse_args(argv)
    assert args.remain_prompt == ["a dog", "a cow"] and str(args.remain_prompts) == "keep.csv"
    err = capsys.readouterr().err
    assert "--retain-prompt is deprecated; use --remain-prompt" in err
    assert "--retain-prompts is deprecated; use --remain-prompts" in err and err.count("\n") == 2
    with pytest.warns(DeprecationWarning, match="remain="):
        with pytest.raises(erase.OptionError, match="remain=... alone"):
            erase.unlearn("nowhere", forget=7, remain=[1], retain=[2])
