"""Single-file checkpoints: one `.safetensors` file in the original CompVis / A1111 layout (`model.diffusion_model.*`,
`first_stage_model.*`, `cond_stage_model.*`; SDXL's `conditioner.embedders.*`), as model sites distribute them.

diffusers' `from_single_file` of the pipeline class that a local diffusers folder of the same family names
(`--model-config DIR`, its model_index.json `_class_name`) converts the file's weights; that folder supplies every
config, the tokenizers and the scheduler, and any component the file does not hold. Nothing is downloaded. The
loaded pipeline is then opened like an in-memory one (`backbone_of_pipeline` + the adapter's `from_pipeline`), so
every backbone with a single-file layout reads it through this one path, and the erased model is saved as a full
diffusers folder. The file is only read.

Pickle checkpoints (.ckpt, .pt, .pth, .bin) are refused: unpickling can run code the file carries.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from erase.errors import ModelError, option
from erase.pipelines.base import safetensors_problem

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SINGLE_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def single_file_classes() -> list[str]:
    """Pipeline classes erase has an adapter for and diffusers can read from a single file."""
    import diffusers

    from erase.pipelines import PIPELINE_CLASSES

    return sorted(name for name in PIPELINE_CLASSES if hasattr(getattr(diffusers, name, None), "from_single_file"))


def check_single_file(path: str | Path, config_dir: str | Path | None) -> str:
    """Refuse what cannot be read, before any weights load: returns the pipeline class `config_dir` names."""
    path, model, model_config = Path(path), option("--model", "model"), option("--model-config", "model_config")
    if path.is_dir():
        raise ModelError(f"{model_config} applies to a single-file checkpoint, and {model} {str(path)!r} is a folder "
                         f"(it has its own configs); leave {model_config} out")
    if not path.exists():
        raise ModelError(f"{model} {str(path)!r} does not exist; pass a diffusers model folder, or a .safetensors "
                         f"checkpoint file with {model_config}")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelError(f"{model} {str(path)!r} is a pickle checkpoint ({suffix}); pickle checkpoints are never "
                         "loaded (they can run code); convert it to .safetensors where you trust the file: with "
                         "diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py --checkpoint_path FILE "
                         f"--dump_path DIR (then pass DIR as {model}), or by re-saving its tensors with "
                         f"safetensors.torch.save_file (then pass that file with {model_config})")
    if suffix != ".safetensors":
        raise ModelError(f"{model} {str(path)!r} is a file but not a .safetensors checkpoint; pass a diffusers "
                         f"model folder, or a single-file checkpoint (.safetensors) with {model_config}")
    if config_dir is None:
        raise ModelError(f"{model} {str(path)!r} is a single-file checkpoint: pass {model_config} DIR, a local "
                         "diffusers folder of the same family (e.g. a copy of the base model it was fine-tuned "
                         "from) whose configs and tokenizer erase uses; nothing is downloaded")
    problem = safetensors_problem(path)
    if problem is not None:
        raise ModelError(f"{model} {str(path)!r} is truncated or not a safetensors file ({problem}); download it again "
                         "or use an intact copy")
    return config_class(config_dir)


def config_class(config_dir: str | Path) -> str:
    """The pipeline class of the `--model-config` folder, refused unless erase reads single files of it."""
    from erase.pipelines.base import check_model_folder

    where, model_config = str(config_dir), option("--model-config", "model_config")
    index_file = Path(config_dir) / "model_index.json"
    if not Path(config_dir).is_dir():
        raise ModelError(f"{model_config} {where!r} is not a folder; pass a local diffusers folder of the checkpoint's "
                         "family (with model_index.json)")
    if not index_file.is_file():
        raise ModelError(f"{model_config} {where!r} is not a diffusers pipeline folder (no model_index.json); pass a "
                         "local diffusers folder of the checkpoint's family, e.g. one written by `save_pretrained`")
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{model_config} {where!r}: model_index.json is not valid JSON ({error}); re-save the folder "
                         "or use an intact copy") from None
    name = index.get("_class_name") if isinstance(index, dict) else None
    supported = single_file_classes()
    if name not in supported:
        raise ModelError(f"{model_config} {where!r} holds a {name!r} pipeline (model_index.json _class_name); erase "
                         f"reads single-file checkpoints of {supported}: pass a folder of one of those")
    check_model_folder(config_dir, index)
    return name


@contextlib.contextmanager
def quiet_diffusers():
    """diffusers' loading bar and its dtype notices off: they would stand above the one-line error that may follow."""
    from diffusers.utils import logging as diffusers_logging

    shown, level = diffusers_logging.is_progress_bar_enabled(), diffusers_logging.get_verbosity()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        if shown:
            diffusers_logging.enable_progress_bar()


def unloaded_weights(pipeline) -> dict[str, list[str]]:
    """{component: names of tensors left on the meta device}: what neither the file nor the config folder filled."""
    import torch

    empty = {}
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module):
            names = [n for n, t in [*component.named_parameters(), *component.named_buffers()] if t.is_meta]
            if names:
                empty[name] = names
    return empty


def load_single_file(path: str | Path, config_dir: str | Path | None, train_params: str | None = "full"):
    """The adapter of a single-file checkpoint read with the configs of `config_dir`, its weights in float32."""
    import diffusers
    import torch
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from safetensors import SafetensorError

    from erase.pipelines import BACKBONES, backbone_of_pipeline

    class_name = check_single_file(path, config_dir)
    pipeline_class = getattr(diffusers, class_name)
    where = f"{option('--model', 'model')} {str(path)!r}"
    try:
        with quiet_diffusers():  # dtype left as stored until every tensor is known to be filled (below)
            pipeline = pipeline_class.from_single_file(str(path), config=str(config_dir), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError, SafetensorError,
            SingleFileComponentError) as error:  # what diffusers, transformers and torch raise for weights that parse
        # but do not fit the configs (another family, another size, another layout)
        lines = str(error).strip().splitlines() or [type(error).__name__]
        detail = lines[0] if isinstance(error, SingleFileComponentError) else lines[0].split(". ")[0]
        if "meta tensor" in detail:  # accelerate moving a model whose tensors the file left unfilled
            detail = "the file lacks weights that the configs describe"
        raise ModelError(f"{where} cannot be read as a {class_name} checkpoint with the configs of "
                         f"{option('--model-config', 'model_config')} {str(config_dir)!r} ({detail[:300]}); pass a "
                         "file in the original single-file layout holding every component, and a folder of its own "
                         "family") from None
    empty = unloaded_weights(pipeline)
    if empty:
        component, names = next(iter(empty.items()))
        count = f"{len(names)} tensor{'s' if len(names) > 1 else ''}"
        raise ModelError(f"{where} holds no weights for {count} of the {component} that "
                         f"{option('--model-config', 'model_config')} {str(config_dir)!r} describes (e.g. "
                         f"{names[0]!r}); pass a folder of the file's own model family and size")
    for component in pipeline.components.values():  # erase trains float32; half-precision files are common
        if isinstance(component, torch.nn.Module) and any(t.is_floating_point() and t.dtype != torch.float32
                                                          for t in component.state_dict().values()):
            component.to(torch.float32)
    backbone = backbone_of_pipeline(pipeline)
    adapter_class = BACKBONES[backbone]
    return adapter_class.from_pipeline(pipeline, getattr(pipeline, adapter_class.trained_component), {},
                                       train_params=train_params)
