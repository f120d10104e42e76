"""Single-file checkpoints (erase/pipelines/single_file.py): a tiny Stable Diffusion written as ONE original-layout
.safetensors file (tests/ldm_layout.py), read with a diffusers folder of the same architecture but other weights as
--model-config, so every weight that comes back provably came from the file."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

import erase
from erase.errors import ModelError
from tests.conftest import tiny_stable_diffusion, tree_digest
from tests.ldm_layout import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, ldm_state_dict

PARTS = ("unet", "vae", "text_encoder")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state_dicts(unet, vae, text_encoder) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
            for name, module in zip(PARTS, (unet, vae, text_encoder))}


def assert_same_weights(got: dict, want: dict) -> None:
    for name in PARTS:
        assert set(got[name]) == set(want[name]), (name, set(got[name]) ^ set(want[name]))
        different = [k for k in want[name] if not torch.equal(got[name][k], want[name][k])]
        assert not different, (name, different[:5])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(file, config folder, the file's weights per component): the folder holds other random weights."""
    root = tmp_path_factory.mktemp("single-file")
    tiny_stable_diffusion(root / "config-tokenizer", seed=1).to_pipeline().save_pretrained(root / "config")
    model = tiny_stable_diffusion(root / "tokenizer", seed=0)
    file = root / "tiny.safetensors"
    save_file(ldm_state_dict(model.denoiser, model.vae.vae, model.text_encoder), file)
    return file, root / "config", state_dicts(model.denoiser, model.vae.vae, model.text_encoder)


def test_the_file_is_in_the_original_layout_and_diffusers_reads_back_every_tensor(checkpoint):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    file, config, weights = checkpoint
    with safe_open(file, "pt") as handle:
        keys = set(handle.keys())
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)) for k in keys)
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.output_blocks.1.2.conv.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.up.0.block.0.conv1.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in keys, key
    assert len(keys) == sum(len(w) for w in weights.values())
    pipeline = StableDiffusionPipeline.from_single_file(str(file), config=str(config), local_files_only=True)
    assert_same_weights(state_dicts(pipeline.unet, pipeline.vae, pipeline.text_encoder), weights)
    folder = StableDiffusionPipeline.from_pretrained(config)  # the configs' own weights differ: the file was read
    assert not torch.equal(folder.unet.conv_out.weight, pipeline.unet.conv_out.weight)


def test_open_model_gives_the_files_exact_weights_as_a_stable_diffusion_adapter(checkpoint):
    from erase.models import open_model

    file, config, weights = checkpoint
    opened = open_model(file, model_config=config)
    adapter = opened.adapter
    assert opened.kind == "file" and opened.description == str(file) and opened.folder is None
    assert adapter.backbone == "stable_diffusion" and adapter.source is None
    assert_same_weights(state_dicts(adapter.denoiser, adapter.vae.vae, adapter.text_encoder), weights)


def test_a_half_precision_file_is_read_as_float32(checkpoint, tmp_path):
    from safetensors.torch import load_file

    from erase.models import open_model

    file, config, weights = checkpoint
    half = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in load_file(file).items()}, half)
    adapter = open_model(half, model_config=config).adapter
    unet = adapter.denoiser.state_dict()
    assert all(v.dtype == torch.float32 for v in unet.values())
    assert all(torch.equal(unet[k], v.half().float()) for k, v in weights["unet"].items())


def test_erase_unlearn_command_writes_a_plain_diffusers_folder_and_leaves_the_file_alone(checkpoint, tmp_path):
    from diffusers import StableDiffusionPipeline

    from erase.cli.main import main

    file, config, weights = checkpoint
    before, config_before = digest(file), tree_digest(config)
    out = tmp_path / "out"
    code = main(["unlearn", "--model", str(file), "--model-config", str(config), "--forget-prompt", "a photo of a cat",
                 "--remain-prompt", "a photo of a dog", "--steps", "2", "--batch-size", "1", "--fisher-batches", "1",
                 "--images-per-condition", "1", "--generation-steps", "2", "--out", str(out)])
    assert code == 0
    assert digest(file) == before and tree_digest(config) == config_before
    record = json.loads((out / "run.json").read_text())
    index = json.loads((out / "model_index.json").read_text())
    assert record["model"] == str(file) and record["backbone"] == "stable_diffusion"
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["_erase"]["erased"]["source"] == str(file)
    assert index["_erase"]["erased"]["forget_prompts"] == ["a photo of a cat"]

    erased = StableDiffusionPipeline.from_pretrained(out)
    saved = state_dicts(erased.unet, erased.vae, erased.text_encoder)
    assert_same_weights({**saved, "unet": weights["unet"]}, weights)  # only the UNet is new
    assert any(not torch.equal(saved["unet"][k], weights["unet"][k]) for k in weights["unet"]), "the UNet was trained"
    images = erased(["a photo of a dog"], num_inference_steps=2, height=16, width=16, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3) and bool((images >= 0).all() and (images <= 1).all())


def test_python_api_takes_model_config_and_gives_back_a_pipeline(checkpoint):
    from diffusers import StableDiffusionPipeline

    file, config, weights = checkpoint
    before = digest(file)
    erased, record = erase.unlearn(file, forget=["a photo of a cat"], remain=["a photo of a dog"], method="esd",
                                   model_config=config, steps=1, batch_size=1, ddim_steps=2, seed=0)
    assert type(erased) is StableDiffusionPipeline and record["model"] == str(file)
    assert erased.config["_erase"]["erased"]["method"] == "esd"
    images, sampled = erase.sample(file, prompts=["a photo of a dog"], model_config=config, n_per_condition=1, steps=2)
    assert images.shape == (1, 3, 16, 16) and sampled["model"] == str(file)
    assert digest(file) == before


def test_model_config_is_refused_for_folders_and_in_memory_models(checkpoint):
    from erase.models import open_model

    file, config, _ = checkpoint
    with pytest.raises(ModelError, match=r"model_config applies to a single-file checkpoint, and model '.*' is a folder"):
        open_model(config, model_config=config)
    pipeline = tiny_stable_diffusion(file.parent / "memory").to_pipeline()
    with pytest.raises(ModelError, match=r"model_config applies to a single-file checkpoint path; this model is an "
                                         r"in-memory StableDiffusionPipeline"):
        open_model(pipeline, model_config=config)
