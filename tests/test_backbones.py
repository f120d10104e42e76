"""DiT and Stable Diffusion through the same adapter interface: SFR-on changes only what it may, and the
results load in plain diffusers."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, DiTPipeline, StableDiffusionPipeline

from erase.data import ImageDataset
from erase.engine import Runtime
from erase.saliency import load_mask, trainable_parameters
from erase.methods.sfron import SFRonConfig, sfron
from erase.pipelines import load_adapter
from erase.pipelines.dit import DiTAdapter, tiny_dit
from erase.pipelines.latent import tiny_vae
from erase.cli.main import main
from tests.conftest import tiny_stable_diffusion


def file_hashes(folder: Path, component: str) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / component).rglob("*")) if p.is_file()}


def tiny_dit_adapter(seed=0) -> DiTAdapter:
    torch.manual_seed(seed)
    return DiTAdapter(tiny_dit(), tiny_vae(), DDPMScheduler(num_train_timesteps=1000))


def masked_run_keeps_mask_zero_entries(adapter, forget, remain, frozen_modules, **config):
    """SFR-on with remain_alpha 0 and a random mask: mask-0 entries and frozen modules end bit-identical."""
    params = trainable_parameters(adapter.denoiser)
    torch.manual_seed(1)
    mask = {name: torch.rand_like(p) < 0.5 for name, p in params.items()}
    before = {name: p.detach().clone() for name, p in params.items()}
    frozen_before = [{k: v.clone() for k, v in m.state_dict().items()} for m in frozen_modules]
    settings = dict(steps=3, batch_size=4, remain_alpha=0.0, lr=1e-2, max_grad_norm=None)
    sfron(adapter, forget, remain, SFRonConfig(**{**settings, **config}), Runtime(seed=0), mask=mask)
    for name, p in params.items():
        assert torch.equal(p[~mask[name]], before[name][~mask[name]]), f"mask-0 entries of {name} moved"
    moved = sum(int((p != before[name])[mask[name]].sum()) for name, p in params.items())
    assert moved > 0, "the salient entries should move"
    for module, state in zip(frozen_modules, frozen_before):
        assert all(torch.equal(v, state[k]) for k, v in module.state_dict().items()), f"{type(module).__name__} changed"


def test_dit_sfron_moves_only_salient_transformer_entries():
    adapter = tiny_dit_adapter()
    assert adapter.image_shape == (3, 8, 8)  # 4x4 latents, VAE factor 2
    forget = ImageDataset(torch.rand(8, 3, 8, 8) * 2 - 1, torch.full((8,), 3), [])
    remain = ImageDataset(torch.rand(8, 3, 8, 8) * 2 - 1, torch.tensor([1, 2] * 4), [])
    masked_run_keeps_mask_zero_entries(adapter, forget, remain, [adapter.vae.vae])


def test_dit_predicts_the_noise_half_of_the_learned_sigma_output():
    adapter = tiny_dit_adapter()
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([3, 700]), torch.tensor([5, 1000])
    with torch.no_grad():
        full = adapter.denoiser(x, timestep=t, class_labels=y).sample
        assert full.shape[1] == 8 and torch.equal(adapter.model_output(x, t, y), full[:, :4])


def test_dit_unlearn_cli_with_generated_data_loads_in_dit_pipeline(tmp_path, capsys):
    base = tmp_path / "dit"
    tiny_dit_adapter().save_pretrained(base)
    out = tmp_path / "erased"
    code = main(["unlearn", "--model", str(base), "--forget-class", "3", "--remain-classes", "1,2", "--data", "generated",
                 "--images-per-condition", "2", "--generation-steps", "2", "--steps", "2", "--batch-size", "2",
                 "--fisher-batches", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert file_hashes(out, "vae") == file_hashes(base, "vae") and file_hashes(out, "scheduler") == file_hashes(base, "scheduler")
    assert file_hashes(out, "transformer") != file_hashes(base, "transformer")
    record = json.loads((out / "run.json").read_text())
    assert record["backbone"] == "dit" and record["data"]["source"] == "generated"
    assert record["forget_images"] == 2 and record["remain_images"] == 4
    assert len(json.loads((out / "generated" / "index.json").read_text())["images"]) == 6
    pipe = DiTPipeline.from_pretrained(out)
    assert pipe(class_labels=[3], num_inference_steps=2, guidance_scale=1.5, output_type="np").images.shape == (1, 8, 8, 3)
    assert isinstance(load_adapter(out), DiTAdapter)


@pytest.fixture
def sd_folder(tmp_path):
    folder = tmp_path / "sd"
    tiny_stable_diffusion(tmp_path).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("choice", ["full", "xattn", "noxattn"])
def test_sd_sfron_changes_only_salient_entries_of_the_chosen_unet_parameters(sd_folder, choice):
    adapter = load_adapter(sd_folder, train_params=choice)
    everything = dict(adapter.denoiser.named_parameters())
    trained = set(trainable_parameters(adapter.denoiser))
    text = {n for n in everything if "attn2" in n}  # ESD's rule, written out here
    output = {n for n in everything if n.startswith(("time_embedding", "conv_out", "conv_norm_out"))}
    expected = {"full": set(everything), "xattn": text, "noxattn": set(everything) - text - output}[choice]
    assert trained == expected and text
    untouched = {n: p.detach().clone() for n, p in everything.items() if n not in trained}
    ids = adapter.register_prompts(["a photo of a nude person", "a photo of a person wearing clothes"])
    forget = ImageDataset(torch.rand(4, 3, 16, 16) * 2 - 1, ids[:1].repeat(4), [])
    remain = ImageDataset(torch.rand(4, 3, 16, 16) * 2 - 1, ids[1:].repeat(4), [])
    masked_run_keeps_mask_zero_entries(adapter, forget, remain, [adapter.text_encoder, adapter.vae.vae])
    assert all(torch.equal(everything[n], p) for n, p in untouched.items()), "a frozen UNet parameter moved"


def test_sd_unlearn_cli_by_prompt_writes_a_stable_diffusion_pipeline(sd_folder, tmp_path, capsys):
    out = tmp_path / "erased"
    code = main(["unlearn", "--model", str(sd_folder), "--forget-prompt", "a photo of a nude person",
                 "--remain-prompt", "a photo of a person wearing clothes",
                 "--replacement-prompt", "a photo of a person wearing clothes", "--forget-objective", "pseudo",
                 "--train-params", "xattn", "--images-per-condition", "2", "--generation-steps", "2",
                 "--steps", "2", "--batch-size", "2", "--fisher-batches", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for component in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert file_hashes(out, component) == file_hashes(sd_folder, component), component
    record = json.loads((out / "run.json").read_text())
    assert record["train_params"] == "xattn" and record["replacement_prompt"] == "a photo of a person wearing clothes"
    assert record["config"]["forget_objective"] == "pseudo"
    assert record["config"]["pseudo_class"] == record["prompt_ids"]["a photo of a person wearing clothes"] > 0
    assert all("attn2" in name for name in load_mask(out / "mask.safetensors"))
    pipe = StableDiffusionPipeline.from_pretrained(out)
    image = pipe(["a photo of a cat"], num_inference_steps=2, height=16, width=16, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
    info = json.loads((out / "model_index.json").read_text())["_erase"]
    assert info["erased"]["forget_prompts"] == ["a photo of a nude person"]


@pytest.mark.parametrize("argv, message", [
    (["--forget-class", "3"], "erases prompts; use --forget-prompt"),
    (["--forget-prompt", "a cat"], "give prompts to keep"),
    (["--forget-prompt", "a cat", "--remain-prompt", "a dog", "--replacement-prompt", "a cow", "--forget-objective",
      "adaptive"], "pass both"),
    (["--forget-prompt", "a cat", "--remain-prompt", "a dog", "--data", "digits"], "prompt erasure needs"),
])
def test_prompt_erasure_usage_errors(sd_folder, tmp_path, capsys, argv, message):
    code = main(["unlearn", "--model", str(sd_folder), *argv, "--out", str(tmp_path / "o")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
