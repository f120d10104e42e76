"""Saved folders are plain diffusers; the adapters' noise, guidance and sampling follow their formulas."""

import json

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

import erase
from erase.errors import UsageError
from erase.pipelines import load_adapter
from erase.pipelines.cfg_unet import CFGUNetAdapter
from erase.pipelines.ddpm import DDPMAdapter
from tests.conftest import tiny_adapter


def test_cfg_folder_loads_in_plain_diffusers_with_the_same_weights(tmp_path):
    adapter = tiny_adapter()
    adapter.save_pretrained(tmp_path / "model")
    unet = UNet2DModel.from_pretrained(tmp_path / "model", subfolder="unet")
    root_unet = UNet2DModel.from_pretrained(tmp_path / "model")  # the root links to unet/
    pipe = DDPMPipeline.from_pretrained(tmp_path / "model")
    assert isinstance(pipe.scheduler, DDPMScheduler)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 500]), torch.tensor([3, 10])
    with torch.no_grad():
        expected = adapter.model_output(x, t, y)
        assert torch.equal(unet(x, t, class_labels=y).sample, expected)
        assert torch.equal(root_unet(x, t, class_labels=y).sample, expected)
        assert torch.equal(pipe.unet(x, t, class_labels=y).sample, expected)
    info = json.loads((tmp_path / "model" / "model_index.json").read_text())["_erase"]
    assert info["backbone"] == "cfg_unet"
    assert info["class_names"] == [str(i) for i in range(10)]
    assert info["null_class"] == 10 and "eps_null + s" in info["guidance_convention"]


def test_unconditional_ddpm_folder_generates_with_ddpm_pipeline(tmp_path):
    torch.manual_seed(0)
    DDPMAdapter.create(8, (16, 32)).save_pretrained(tmp_path / "ddpm")
    pipe = DDPMPipeline.from_pretrained(tmp_path / "ddpm")
    images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    assert isinstance(load_adapter(tmp_path / "ddpm"), DDPMAdapter)


def test_public_checkpoint_without_erase_key_is_recognised(tmp_path):
    adapter = tiny_adapter()
    DDPMPipeline(unet=adapter.denoiser, scheduler=adapter.scheduler).save_pretrained(tmp_path / "plain")
    loaded = load_adapter(tmp_path / "plain")
    assert isinstance(loaded, CFGUNetAdapter) and loaded.num_classes == 10


def test_guidance_combines_conditional_and_null_predictions():
    adapter = tiny_adapter()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 900]), torch.tensor([1, 2, 3])
    with torch.no_grad():
        eps_c = adapter.model_output(x, t, y)
        eps_null = adapter.model_output(x, t, adapter.null_condition(3))
        guided = adapter.guided_output(x, t, y, 2.5)
    assert torch.allclose(guided, eps_null + 2.5 * (eps_c - eps_null), atol=1e-5)
    assert torch.equal(adapter.guided_output(x, t, y, 1.0), eps_c)


def test_add_noise_is_the_forward_process():
    adapter = tiny_adapter()
    x0, noise, t = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.tensor([0, 999])
    abar = adapter.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(adapter.add_noise(x0, noise, t), abar.sqrt() * x0 + (1 - abar).sqrt() * noise, atol=1e-6)


def test_sampling_is_seeded_and_in_unit_range():
    adapter = tiny_adapter()
    first = adapter.sample([0, 7], num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    again = adapter.sample([0, 7], num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert first.shape == (2, 1, 8, 8) and torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 1
    with pytest.raises(UsageError, match="do not exist"):
        adapter.sample([12], num_inference_steps=1)


def test_bad_model_folders_are_named(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a diffusers pipeline folder"):
        load_adapter(tmp_path / "empty")


def test_erase_sample_draws_an_unconditional_model_without_classes_as_diffusers_ddim_does(tmp_path, capsys):
    from diffusers import DDIMPipeline, DDIMScheduler

    from erase.cli.main import main

    torch.manual_seed(0)
    DDPMAdapter.create(8, (16, 32)).save_pretrained(tmp_path / "ddpm")
    images, record = erase.sample(tmp_path / "ddpm", n_per_condition=3, seed=5, steps=4)
    assert images.shape == (3, 1, 8, 8) and [r["seed"] for r in record["images"]] == [5, 6, 7]
    unet = UNet2DModel.from_pretrained(tmp_path / "ddpm", subfolder="unet")
    scheduler = DDIMScheduler.from_pretrained(tmp_path / "ddpm", subfolder="scheduler")
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    for k, seed in enumerate((5, 6, 7)):  # image k alone, seeded seed + k, drawn by diffusers' own DDIM (eta 0)
        reference = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=4, eta=0.0,
                         output_type="np").images[0]
        assert torch.allclose(images[k, 0], torch.from_numpy(reference[..., 0]), atol=1e-4)
    assert main(["sample", "--model", str(tmp_path / "ddpm"), "--classes", "0", "--out", str(tmp_path / "o")]) == 2
    assert "unconditional" in capsys.readouterr().err and not (tmp_path / "o").exists()
