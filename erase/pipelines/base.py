"""The one interface every erasure method sees: a backbone adapter.

Methods in `erase/` call only what is declared here, so a method written once runs on every backbone
(DDPM, class-conditional CFG UNet, DiT, Stable Diffusion). The calling convention follows k-diffusion's
single `model(x, sigma, **extra)` idea: `predict_noise(x_t, timesteps, condition)` for every model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

# What a condition is depends on the backbone: a LongTensor of class ids for class-conditional models,
# None for unconditional ones, prompt embeddings for text-to-image models. Methods pass it through untouched.
Condition = Any


@runtime_checkable
class DiffusionAdapter(Protocol):
    """A trainable denoiser plus the fixed parts (scheduler, encoder) needed to train and sample it."""

    denoiser: torch.nn.Module  # the module whose parameters erasure methods train (frozen ones: requires_grad False)
    num_train_timesteps: int
    conditional: bool  # False for unconditional models: conditions are ignored, no guidance
    takes_prompts: bool  # True for text-to-image models: conditions are prompt ids (see register_prompts)
    generative: bool  # False for image classifiers (erase/pipelines/classifier.py): `losses(x, labels)` replaces the
    # noise prediction, and erase.objectives uses it; methods are unchanged
    image_shape: tuple[int, int, int]  # (C, H, W) of the images `encode` takes

    def to(self, device) -> "DiffusionAdapter":
        """Move the denoiser and every frozen component (VAE, text encoder) to `device`."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (N, C, H, W) -> the space the denoiser works in (pixels or latents)."""

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""

    def predict_noise(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: Condition) -> torch.Tensor:
        """eps_theta(x_t, t, c), same shape as x_t."""

    def null_condition(self, batch_size: int) -> Condition:
        """The unconditional ("null") condition used for classifier-free guidance."""

    def guided_noise(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: Condition,
                     guidance_scale: float | None) -> torch.Tensor:
        """eps_null + s (eps_c - eps_null): what sampling (and a guided Fisher) uses."""

    def sample(
        self,
        conditions: Sequence | torch.Tensor,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One image per condition, floats in [0, 1], (N, C, H, W). Guidance None = the model's own scale."""

    def sample_latents(self, conditions, num_inference_steps=None, guidance_scale=None, generator=None,
                       stop_after: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampler's latents (and their timestep), optionally stopped after `stop_after` steps (ESD)."""

    def save_pretrained(self, directory: str | Path) -> None:
        """Write a folder that plain diffusers loads."""

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> "DiffusionAdapter":
        """Load a folder written by `save_pretrained` (or a public checkpoint of the same layout)."""


# ---------------------------------------------------------------------------------------------------------
# Shared mechanics of the adapters in this package (each backbone file adds only what differs).

ERASE_KEY = "_erase"  # this package's facts about a model, kept in model_index.json (diffusers ignores "_" keys)


def read_model_index(directory: str | Path) -> dict:
    """model_index.json of a diffusers folder, with a clear error when the folder is not one."""
    from erase.errors import ModelError, option

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"model folder {str(directory)!r} does not exist; pass a diffusers model folder to "
                         f"{option('--model', 'model')}")
    index = directory / "model_index.json"
    if not index.is_file():
        raise ModelError(
            f"{str(directory)!r} is not a diffusers pipeline folder (no model_index.json); "
            "pass a folder written by `erase train` or `save_pretrained`"
        )
    try:
        contents = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"model folder {str(directory)!r}: model_index.json is not valid JSON ({error}); {REPAIR}") from None
    if not isinstance(contents, dict):
        raise ModelError(f"model folder {str(directory)!r}: model_index.json is not a JSON object; {REPAIR}")
    return contents


REPAIR = "re-save the model or use an intact copy"


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file (8-byte header length, JSON header, then exactly the tensor bytes the
    header's data_offsets cover), or None; reads only the header."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        header_size = int.from_bytes(head, "little") if len(head) == 8 else None
        if header_size is None or 8 + header_size > size:
            return f"{size} bytes, too short for its header"
        try:
            header = json.loads(handle.read(header_size))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not safetensors JSON"
    if 8 + header_size + end != size:
        return f"{size} bytes where the header describes {8 + header_size + end}"
    return None


def check_model_folder(directory: str | Path, index: dict) -> None:
    """Refuse a damaged pipeline folder before any weights load, naming the broken file: every component that
    model_index.json lists must be a folder with a config file, JSON files that parse and whole safetensors files."""
    from erase.errors import ModelError

    directory = Path(directory)
    where = f"model folder {str(directory)!r}"
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or not spec or spec[0] is None:
            continue  # "_class_name", "_erase", ... and optional components saved as [null, null]
        folder = directory / name
        if not folder.is_dir():
            raise ModelError(f"{where}: the {name}/ folder that model_index.json lists is missing; {REPAIR}")
        if not any(folder.glob("*config.json")):
            raise ModelError(f"{where}: {name}/ has no config file (config.json or scheduler_config.json); {REPAIR}")
        for file in sorted(folder.iterdir()):
            if file.suffix == ".json":
                try:
                    json.loads(file.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    raise ModelError(f"{where}: {name}/{file.name} is not valid JSON ({error}); {REPAIR}") from None
            elif file.suffix == ".safetensors":
                problem = safetensors_problem(file)
                if problem is not None:
                    raise ModelError(f"{where}: {name}/{file.name} is truncated or not a safetensors file ({problem}); "
                                     f"{REPAIR}")


def write_erase_info(directory: str | Path, info: dict) -> None:
    path = Path(directory) / "model_index.json"
    index = json.loads(path.read_text())
    index[ERASE_KEY] = info
    path.write_text(json.dumps(index, indent=2) + "\n")


def copy_components(source: Path, target: Path, skip: str) -> None:
    """Copy every file of a pipeline folder except the `skip` component, byte for byte (nothing re-saved)."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if relative.parts[0] == skip or path.is_dir():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)


class AdapterBase:
    """Training schedule, forward process, classifier-free guidance and DDIM sampling shared by every backbone.

    Subclasses set `denoiser`, `scheduler` (whose config gives the training noise schedule) and implement
    `predict_noise`, `null_condition`, `condition_batch`, `latent_shape`, and where they work in a latent
    space, `encode`/`decode`.
    """

    backbone = "base"
    conditional = True
    takes_prompts = False
    generative = True

    def __init__(self, denoiser: torch.nn.Module, scheduler, info: dict | None = None):
        from diffusers import DDPMScheduler

        self.denoiser = denoiser
        self.scheduler = scheduler
        # add_noise needs the training schedule; any scheduler's config (DDIM, DPM-Solver, ...) gives the same betas
        self.noise_schedule = DDPMScheduler.from_config(scheduler.config)
        self.info = dict(info or {})
        self.info["backbone"] = self.backbone

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_schedule.config.num_train_timesteps

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def guidance_scale(self) -> float:
        return float(self.info.get("guidance_scale", 1.0))

    def to(self, device) -> "AdapterBase":
        """Move the denoiser and every frozen component to `device`."""
        self.denoiser.to(device)
        return self

    def embed(self, condition):
        """The condition as the denoiser takes it (text models turn prompt ids into embeddings here)."""
        return condition

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images  # pixel-space model

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return (x0.float() / 2 + 0.5).clamp(0, 1)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.noise_schedule.add_noise(x0, noise, timesteps)

    def guided_noise(self, x_t, timesteps, condition, guidance_scale: float | None) -> torch.Tensor:
        """eps_null + s * (eps_c - eps_null), s = `guidance_scale` or the model's stored scale."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        if scale == 1.0 or not self.conditional:
            return self.predict_noise(x_t, timesteps, condition)
        batch = x_t.shape[0]
        conditions = torch.cat([self.embed(condition), self.embed(self.null_condition(batch))])
        both = self.predict_noise(torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]), conditions)  # one forward
        eps_cond, eps_null = both.chunk(2)
        return eps_null + scale * (eps_cond - eps_null)

    @torch.no_grad()
    def sample_latents(self, conditions, num_inference_steps=None, guidance_scale=None, generator=None,
                       stop_after: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM (eta 0) from noise; with `stop_after=k`, only the first k steps: returns (x_t, t) with t the
        timestep x_t belongs to (ESD trains on such partially denoised latents)."""
        from diffusers import DDIMScheduler
        from diffusers.utils.torch_utils import randn_tensor

        device, dtype = self.device, next(self.denoiser.parameters()).dtype
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps or 50, device=device)
        count = len(conditions)
        x = randn_tensor((count, *self.latent_shape), generator=generator, device=device, dtype=dtype)
        condition = self.condition_batch(conditions, device)
        timesteps = scheduler.timesteps if stop_after is None else scheduler.timesteps[: stop_after + 1]
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            for index, t in enumerate(timesteps):
                if stop_after is not None and index == stop_after:
                    return x, t.expand(count)
                eps = self.guided_noise(x, t.expand(count), condition, guidance_scale)
                x = scheduler.step(eps, t, x).prev_sample
        finally:
            self.denoiser.train(was_training)
        return x, torch.zeros(count, dtype=torch.long, device=device)

    def sample(self, conditions, num_inference_steps=None, guidance_scale=None, generator=None) -> torch.Tensor:
        """DDIM (eta 0) sampling, one image per entry of `conditions`, floats in [0, 1]."""
        return self.decode(self.sample_latents(conditions, num_inference_steps, guidance_scale, generator)[0])
