"""Tiny seeded models and data shared by the tests (CPU, seconds)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from erase.data import digits
from erase.engine import Runtime
from erase.train import TrainConfig, train
from erase.pipelines.cfg_unet import CFGUNetAdapter
from erase.pipelines.text import write_character_vocabulary as write_tiny_clip_tokenizer  # noqa: F401 (tests import it)


def tiny_adapter(seed: int = 0, channels=(16, 32)) -> CFGUNetAdapter:
    torch.manual_seed(seed)
    return CFGUNetAdapter.create(8, channels, 1, num_classes=10, class_names=[str(i) for i in range(10)])


@pytest.fixture(scope="session")
def digit_data():
    return digits(8)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, digit_data) -> Path:
    """A CFG UNet trained for 300 steps on sklearn's 8x8 digits (about 10 s), saved as a diffusers folder."""
    adapter = tiny_adapter()
    train(adapter, digit_data, TrainConfig(steps=300, batch_size=64, lr=2e-3), Runtime(seed=0, log_every=100))
    directory = tmp_path_factory.mktemp("models") / "base"
    adapter.save_pretrained(directory)
    return directory


def tree_digest(directory: Path) -> str:
    """Hash of every file's relative path, bytes and mode below `directory`."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(directory)).encode())
        digest.update(file.read_bytes())
        digest.update(str(file.stat().st_mode).encode())
    return digest.hexdigest()


def tiny_stable_diffusion(tmp_path: Path, seed: int = 0, pixel_space: bool = False, image_size: int = 16):
    """Random-init SD components built from configs: CLIP text model, tokenizer, UNet, optional tiny VAE."""
    from diffusers import DDPMScheduler

    from erase.pipelines.latent import tiny_vae
    from erase.pipelines.stable_diffusion import StableDiffusionAdapter, tiny_text_encoder, tiny_unet_condition

    torch.manual_seed(seed)
    text_encoder, tokenizer = tiny_text_encoder(tmp_path / "tok")
    vae = None if pixel_space else tiny_vae(3, 4, (16, 32))
    unet = tiny_unet_condition(sample_size=image_size if pixel_space else image_size // 2,
                               in_channels=1 if pixel_space else 4)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, steps_offset=1)  # Stable Diffusion's schedule
    return StableDiffusionAdapter(unet, vae, text_encoder, tokenizer, scheduler)
