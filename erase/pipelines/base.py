"""The one interface every erasure method sees: a backbone adapter.

Methods in `erase/` call only what is declared here, so a method written once runs on every backbone
(DDPM, class-conditional CFG UNet, DiT, Stable Diffusion). The calling convention follows k-diffusion's
single `model(x, sigma, **extra)` idea: `model_output(x_t, timesteps, condition)` for every model, in the model's own
prediction space (noise, v, x0 or flow velocity), and the adapter owns the target it was trained toward
(`prediction_and_target`, erase/pipelines/targets.py), so methods never assume epsilon.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from erase.pipelines.targets import gaussian_like

# What a condition is depends on the backbone: a LongTensor of class ids for class-conditional models,
# None for unconditional ones, prompt embeddings for text-to-image models. Methods pass it through untouched.
Condition = Any


@runtime_checkable
class DiffusionAdapter(Protocol):
    """A trainable denoiser plus the fixed parts (scheduler, encoder) needed to train and sample it. Everything a
    method, the engine, the API or an evaluation calls on a model is declared here (or in the two capability
    protocols below); erase/pipelines/base.py's AdapterBase implements the shared part."""

    backbone: str  # the BACKBONES key (erase/pipelines/__init__.py), recorded in run.json
    pipeline_class: str | None  # the diffusers pipeline class (by name) whose folders and objects it reads and writes
    trained_component: str  # the pipeline component erasure trains ("unet", "transformer")
    preset: str | None  # the erase.methods presets that apply (None: those named by `backbone`)
    default_data: str  # where `--data auto` takes D_f and D_r from: "generated" by the model itself, or "mnist"
    info: dict  # erase's facts about the model (class names, guidance scale, what was erased), saved under _erase
    denoiser: torch.nn.Module  # the module whose parameters erasure methods train (frozen ones: requires_grad False)
    scheduler: Any  # the model's own diffusers scheduler (its config gives the schedule and prediction type)
    num_train_timesteps: int
    conditional: bool  # False for unconditional models: conditions are ignored, no guidance
    takes_prompts: bool  # True for text-to-image models: conditions are prompt ids (see TextConditioned)
    generative: bool  # False for image classifiers (erase/pipelines/classifier.py): `losses(x, labels)` replaces the
    # noise prediction, and erase.objectives uses it; methods are unchanged
    image_shape: tuple[int, int, int]  # (C, H, W) of the images `encode` takes
    latent_shape: tuple[int, int, int]  # (C, h, w) of what the denoiser works on
    num_classes: int  # classes, or prompts registered so far
    class_names: list[str]
    guidance_scale: float  # the model's stored classifier-free guidance scale
    device: torch.device

    def to(self, device) -> "DiffusionAdapter":
        """Move the denoiser and every frozen component (VAE, text encoder) to `device`."""

    def frozen_modules(self) -> list[torch.nn.Module]:
        """The frozen parts (VAE, text encoders); empty for pixel-space class models."""

    def replace_frozen(self, convert: Callable[[torch.nn.Module], torch.nn.Module]) -> Callable[[], None]:
        """Put `convert(module)` in place of each frozen part (e.g. a bf16 copy); returns the undo."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (N, C, H, W) -> the space the denoiser works in (pixels or latents)."""

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process at `timesteps`: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, or (1 - sigma) x0 + sigma noise."""

    def draw(self, x0: torch.Tensor, antithetic: bool = False, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise, timesteps) for a batch of x0, drawn as the model was trained: the one place both are drawn."""

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the model was trained to output for (x0, noise, t): eps, v, x0 or the flow velocity."""

    def model_output(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: Condition) -> torch.Tensor:
        """The denoiser's output at (x_t, t, c) in its prediction space, same shape as x_t."""

    def prediction_and_target(self, x0, condition, noise=None, timesteps=None, guidance_scale=None,
                              antithetic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(model output, training target) for x0 under `condition`; noise and timesteps drawn unless given."""

    def null_condition(self, batch_size: int) -> Condition:
        """The unconditional ("null") condition used for classifier-free guidance."""

    def guided_output(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: Condition,
                      guidance_scale: float | None) -> torch.Tensor:
        """out_null + s (out_c - out_null): what sampling (and a guided Fisher) uses."""

    def condition_batch(self, conditions: Sequence, device) -> Condition:
        """Conditions (class ids, or prompts for text models) as the denoiser takes them for sampling."""

    def embed(self, condition: Condition) -> Condition:
        """A condition as the denoiser takes it (text models turn prompt ids into embeddings)."""

    def training_record(self) -> dict:
        """What the model is trained toward (prediction type, target formula, timestep or sigma distribution)."""

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

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """The denoiser's space -> images as floats in [0, 1]."""

    def save_pretrained(self, directory: str | Path) -> None:
        """Write a folder that plain diffusers loads."""

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> "DiffusionAdapter":
        """Load a folder written by `save_pretrained` (or a public checkpoint of the same layout)."""

    @classmethod
    def from_pipeline(cls, pipeline, denoiser: torch.nn.Module, info: dict, **kwargs) -> "DiffusionAdapter":
        """Wrap an in-memory pipeline of `pipeline_class`, training `denoiser` (its component or a copy)."""

    def to_pipeline(self):
        """The adapter's model as a `pipeline_class` object (frozen parts shared)."""


@runtime_checkable
class ClassConditioned(Protocol):
    """Class-conditional models (CFG UNet, DiT): conditions are class ids."""

    def check_class_ids(self, ids, allow_null: bool = False) -> None:
        """Refuse ids the model does not have (OptionError naming them)."""


@runtime_checkable
class TextConditioned(Protocol):
    """Text-to-image models (erase/pipelines/text.py): conditions are ids of registered prompts."""

    def register_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Ids of `prompts`, encoding the new ones with the frozen text encoders."""

    def select_trainable(self, choice: str) -> None:
        """Train `full`, `xattn` (the attention that reads the text) or `noxattn` parameters only."""

    def token_encoder(self) -> tuple[torch.nn.Module, Any]:
        """(text encoder, tokenizer) whose token table prompt attacks learn rows of; families with several text
        encoders refuse (ModelError)."""

    def temporary_prompt(self, name: str, embedded: dict[str, torch.Tensor]):
        """Context manager: within it, prompt `name` (its id yielded) conditions on `embedded`, the text encoders'
        output for one prompt; the prompt table is restored on exit."""


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


def load_scheduler(directory: str | Path, subfolder: str = "scheduler"):
    """The folder's own scheduler class (scheduler_config.json's _class_name, a diffusers scheduler), DDPMScheduler
    where the name is not one."""
    import diffusers

    config = Path(directory) / subfolder / "scheduler_config.json"
    name = json.loads(config.read_text()).get("_class_name", "") if config.is_file() else ""
    scheduler_class = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
    return (scheduler_class or diffusers.DDPMScheduler).from_pretrained(directory, subfolder=subfolder)


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

    Subclasses pass `denoiser` and `scheduler` (whose config gives the training target, erase/pipelines/targets.py),
    set `vae` where they work in a latent space, and implement `model_output`, `null_condition`, `condition_batch`,
    `from_pipeline` and `to_pipeline`.
    """

    backbone = "base"
    conditional = True
    takes_prompts = False
    generative = True
    pipeline_class = None  # the diffusers pipeline class (by name) whose folders and objects this adapter reads
    trained_component = "unet"  # the pipeline component erasure trains; every other one is copied or shared
    default_data = "generated"  # where `--data auto` finds D_f and D_r: "generated" by the model, or "mnist"
    preset = None  # which erase.methods presets apply (None: the backbone's own name)

    def __init__(self, denoiser: torch.nn.Module, scheduler, info: dict | None = None, **flow_options):
        from erase.pipelines.targets import training_target

        self.denoiser = denoiser
        self.scheduler = scheduler
        # what the model was trained toward, from its own scheduler config (prediction type, or flow matching)
        self.parameterization = training_target(scheduler, **flow_options)
        self.info = dict(info or {})
        self.info["backbone"] = self.backbone

    @property
    def num_train_timesteps(self) -> int:
        return self.parameterization.num_train_timesteps

    @property
    def noise_schedule(self):
        """The training schedule (a DDPMScheduler for the DDPM family, the flow scheduler for flow models)."""
        return self.parameterization.schedule

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def guidance_scale(self) -> float:
        return float(self.info.get("guidance_scale", 1.0))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) the denoiser works on, from its config's in_channels and sample_size."""
        config = self.denoiser.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return config.in_channels, height, width

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images `encode` takes: the latent shape scaled up by the VAE, or itself in pixel space."""
        channels, height, width = self.latent_shape
        if self.vae is None:
            return channels, height, width
        scale = self.vae.scale_factor
        return self.vae.vae.config.in_channels, height * scale, width * scale

    vae = None  # latent models: a FrozenVAE (erase/pipelines/latent.py); None for pixel-space models
    source = None  # a folder read by from_pretrained: save_pretrained copies its other files byte for byte
    text_encoder_names: tuple[str, ...] = ()  # attributes holding frozen text encoders (None where absent)
    image_seq_len = None  # flow models with a resolution-dependent shift (Flux) say how many tokens an image has

    def frozen_modules(self) -> list[torch.nn.Module]:
        """The frozen parts that move with the denoiser: the VAE and the text encoders."""
        modules = [getattr(self, name) for name in self.text_encoder_names]
        return [m for m in modules if m is not None] + ([self.vae.vae] if self.vae is not None else [])

    def replace_frozen(self, convert) -> Callable[[], None]:
        """Put `convert(module)` in place of each frozen part; the returned function puts the originals back (the
        caller's pipeline shares them, so they are swapped, never cast in place)."""
        originals = {name: getattr(self, name) for name in self.text_encoder_names if getattr(self, name) is not None}
        for name, module in originals.items():
            setattr(self, name, convert(module))
        vae = self.vae.vae if self.vae is not None else None
        if vae is not None:
            self.vae.vae = convert(vae)

        def undo() -> None:
            for name, module in originals.items():
                setattr(self, name, module)
            if vae is not None:
                self.vae.vae = vae

        return undo

    def to(self, device) -> "AdapterBase":
        """Move the denoiser, every frozen component and any prompt-embedding table to `device`."""
        self.denoiser.to(device)
        for module in self.frozen_modules():
            module.to(device)
        if getattr(self, "embeddings", None) is not None:
            self.move_embeddings(device)
        return self

    def embed(self, condition):
        """The condition as the denoiser takes it (text models turn prompt ids into embeddings here)."""
        return condition

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the denoiser's space: the VAE's scaled latents, or the pixels themselves."""
        return images if self.vae is None else self.vae.encode(images)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        if self.vae is not None:
            return self.vae.decode(x0)
        return (x0.float() / 2 + 0.5).clamp(0, 1)

    def save_pretrained(self, directory: str | Path) -> None:
        """A full `pipeline_class` folder: the trained component saved and, for a model read from a folder, every
        other file copied from it byte for byte; `_erase` facts in model_index.json."""
        directory = Path(directory)
        if self.source is not None:
            copy_components(self.source, directory, skip=self.trained_component)
            self.denoiser.save_pretrained(directory / self.trained_component)
        else:
            self.to_pipeline().save_pretrained(directory)
        write_erase_info(directory, self.info)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.parameterization.add_noise(x0, noise, timesteps)

    def draw(self, x0: torch.Tensor, antithetic: bool = False, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise, timesteps) as the model was trained: noise first, then timesteps (the global RNG unless
        `generator`)."""
        noise = gaussian_like(x0, generator)
        return noise, self.parameterization.draw_timesteps(x0.shape[0], x0.device, antithetic, generator)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.parameterization.target(x0, noise, timesteps)

    def training_record(self) -> dict:
        return self.parameterization.record()

    def prediction_and_target(self, x0, condition, noise=None, timesteps=None, guidance_scale=None,
                              antithetic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, target) at x_t = add_noise(x0, noise, t); with `guidance_scale`, the guided output."""
        if noise is None or timesteps is None:
            drawn_noise, drawn_timesteps = self.draw(x0, antithetic)
            noise = drawn_noise if noise is None else noise
            timesteps = drawn_timesteps if timesteps is None else timesteps
        x_t = self.add_noise(x0, noise, timesteps)
        if guidance_scale is None:
            output = self.model_output(x_t, timesteps, condition)
        else:
            output = self.guided_output(x_t, timesteps, condition, guidance_scale)
        return output, self.target(x0, noise, timesteps)

    def guided_output(self, x_t, timesteps, condition, guidance_scale: float | None) -> torch.Tensor:
        """out_null + s * (out_c - out_null), s = `guidance_scale` or the model's stored scale. Exact in any
        prediction space: eps, v, x0 and the flow velocity are affine in one another at fixed (x_t, t), and the
        weights (1 - s, s) sum to 1."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        if scale == 1.0 or not self.conditional:
            return self.model_output(x_t, timesteps, condition)
        batch = x_t.shape[0]
        conditions = self.join_conditions(self.embed(condition), self.embed(self.null_condition(batch)))
        both = self.model_output(torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]), conditions)  # one forward
        out_cond, out_null = both.chunk(2)
        return out_null + scale * (out_cond - out_null)

    def join_conditions(self, first, second):
        """Two embedded condition batches as one (text models with pooled embeddings join each part)."""
        return torch.cat([first, second])

    @torch.no_grad()
    def sample_latents(self, conditions, num_inference_steps=None, guidance_scale=None, generator=None,
                       stop_after: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's sampler (targets.py: DDIM eta 0 for the DDPM family, flow-matching Euler for flow models)
        from noise; with `stop_after=k`, only the first k steps: returns (x_t, t) with t the timestep x_t belongs to
        (ESD trains on such partially denoised latents)."""
        from diffusers.utils.torch_utils import randn_tensor

        device, dtype = self.device, next(self.denoiser.parameters()).dtype
        scheduler = self.parameterization.sampler(num_inference_steps or 50, device, self.image_seq_len)
        count = len(conditions)
        x = randn_tensor((count, *self.latent_shape), generator=generator, device=device, dtype=dtype)
        x = x * getattr(scheduler, "init_noise_sigma", 1.0)  # flow-matching schedulers start from unit noise
        condition = self.condition_batch(conditions, device)
        timesteps = scheduler.timesteps if stop_after is None else scheduler.timesteps[: stop_after + 1]
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            for index, t in enumerate(timesteps):
                if stop_after is not None and index == stop_after:
                    return x, t.expand(count)
                output = self.guided_output(x, t.expand(count), condition, guidance_scale)
                x = scheduler.step(output, t, x).prev_sample.to(dtype)
        finally:
            self.denoiser.train(was_training)
        return x, torch.zeros(count, dtype=scheduler.timesteps.dtype, device=device)

    def sample(self, conditions, num_inference_steps=None, guidance_scale=None, generator=None) -> torch.Tensor:
        """The model's sampler, one image per entry of `conditions`, floats in [0, 1]."""
        return self.decode(self.sample_latents(conditions, num_inference_steps, guidance_scale, generator)[0])
