"""Train a class-conditional CFG UNet, or an image classifier, from scratch (the base model, or the gold standard
retrained without the forget set)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from diffusers.training_utils import EMAModel

from erase.engine import Runtime, endless_batches, prepare_training, run_steps, weight_digests
from erase.errors import OptionError, option
from erase.objectives import denoising_losses, drop_conditions
from erase.saliency import trainable_parameters


@dataclass
class TrainConfig:
    """A small-model recipe sized for CPU; every value is recorded in run.json."""

    steps: int = field(default=4000, metadata={"range": "[1, inf)", "help": "optimizer steps"})
    batch_size: int = field(default=64, metadata={"range": "[1, inf)", "help": "images per step"})
    lr: float = field(default=1e-3, metadata={"range": "(0, inf)", "help": "AdamW learning rate (1e-3 trains the small demo UNet faster than 2e-4 at equal steps)"})
    label_dropout: float = field(
        default=0.1, metadata={"range": "[0, 1)", "help": "probability of replacing a label by the null label (enables guidance; Ho & Salimans: 0.1)"}
    )
    ema_decay: float = field(default=0.0, metadata={"range": "[0, 1)", "help": "EMA decay of the saved weights; 0 saves the trained weights"})
    max_grad_norm: float | None = field(default=1.0, metadata={"range": "(0, inf)", "help": "gradient clipping norm"})
    lr_schedule: str = field(default="constant", metadata={"choices": ("constant", "cosine"), "help": "constant, or cosine decay from --lr to 0 over --steps"})


def train(adapter, dataset, config: TrainConfig, runtime: Runtime = Runtime()) -> dict:
    """Denoising training with label dropout; returns per-step losses and timings. Trains `adapter` in place."""
    if config.steps < 1:
        raise OptionError(f"{option('--steps')} must be at least 1, got {config.steps}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise OptionError(f"{option('--ema-decay')} must be in [0, 1), got {config.ema_decay}")
    if runtime.fully_shard:
        raise OptionError(f"erase train does not shard ({option('--fully-shard')}); train on one process or under DDP")
    accelerator, timer, optimizer, stepper = prepare_training(adapter, runtime, lr=config.lr,
                                                              max_grad_norm=config.max_grad_norm, optimizer="adamw")
    params = list(trainable_parameters(adapter.denoiser).values())
    ema = None
    if config.ema_decay > 0:
        ema = EMAModel(params, decay=config.ema_decay, foreach=True)
        ema.to(accelerator.device)
    batches = endless_batches(dataset, config.batch_size, runtime.seed, accelerator)

    def loss_fn():
        images, labels = next(batches)
        # important! label dropout is what makes the model usable with classifier-free guidance
        labels = drop_conditions(adapter, labels, config.label_dropout)
        loss = denoising_losses(adapter, adapter.encode(images), labels).mean()
        return loss, loss

    def step(index: int) -> dict:
        if config.lr_schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (1.0 + math.cos(math.pi * index / config.steps)) / 2.0
        loss = stepper.step(loss_fn)
        if ema is not None:
            ema.step(params)
        return {"train": loss}

    tracked = {"batches": batches, **({"ema": ema} if ema is not None else {})}
    log = run_steps(["train"], config.steps, step, runtime, accelerator, timer, "train", "train", tracked=tracked)
    adapter.denoiser = accelerator.unwrap_model(adapter.denoiser)
    if stepper.undo_frozen is not None:  # the frozen parts the run cast: the saved folder keeps the originals
        stepper.undo_frozen()
    digests = weight_digests(accelerator, adapter.denoiser)  # the trained weights, before EMA replaces them
    if ema is not None:
        ema.copy_to(params)
    if adapter.conditional:  # erasure methods repeat it in their remain steps
        adapter.info["label_dropout"] = config.label_dropout
    adapter.info["weights"] = f"ema (decay {config.ema_decay})" if ema is not None else "trained (no EMA)"
    return {"losses": log.as_lists(), "timings": timer.seconds, "device": str(accelerator.device),
            "is_main_process": accelerator.is_main_process, "num_processes": accelerator.num_processes,
            "process_weight_digests": digests}


@dataclass
class ClassifierTrainConfig:
    """The digit classifier recipe (erase/pipelines/classifier.py); every value is recorded in run.json."""

    epochs: int = field(default=30, metadata={"range": "[1, inf)", "help": "passes over the training images"})
    batch_size: int = field(default=128, metadata={"range": "[1, inf)", "help": "images per step"})
    lr: float = field(default=2e-3, metadata={"range": "(0, inf)", "help": "AdamW peak learning rate, cosine-decayed to 0"})
    weight_decay: float = field(default=1e-4, metadata={"range": "[0, inf)", "help": "AdamW weight decay"})
    shift: int = field(default=0, metadata={"range": "[0, inf)", "help": "random translation by up to this many pixels per batch; 0 (no augmentation) lets the model memorise its training set (train 100%%, test 97.9%% on the default split), so membership is measurable"})


def random_shift(images: torch.Tensor, pixels: int, generator: torch.Generator, fill: float = -1.0) -> torch.Tensor:
    """The batch translated by one random (dx, dy) in [-pixels, pixels]; the uncovered border is `fill`, the
    background (-1 for digits in [-1, 1], 0 for digits in [0, 1])."""
    if pixels == 0:
        return images
    dx, dy = (torch.randint(0, 2 * pixels + 1, (2,), generator=generator) - pixels).tolist()  # CPU: no device sync
    padded = torch.nn.functional.pad(images, (pixels,) * 4, value=fill)
    height, width = images.shape[-2:]
    return padded[..., pixels + dy : pixels + dy + height, pixels + dx : pixels + dx + width]


def train_classifier(adapter, dataset, config: ClassifierTrainConfig, runtime: Runtime = Runtime()) -> dict:
    """Cross-entropy training of a classifier adapter in place (AdamW, cosine decay, random shifts); returns
    per-step losses and timings."""
    steps_per_epoch = max(1, len(dataset) // min(config.batch_size, len(dataset)))
    steps = config.epochs * steps_per_epoch
    accelerator, timer, optimizer, stepper = prepare_training(adapter, runtime, lr=config.lr, max_grad_norm=None,
                                                              optimizer="adamw", weight_decay=config.weight_decay)
    batches = endless_batches(dataset, config.batch_size, runtime.seed, accelerator)
    shifts = torch.Generator().manual_seed(runtime.seed + 1)

    def loss_fn():
        images, labels = next(batches)
        loss = adapter.losses(random_shift(images, config.shift, shifts), labels).mean()
        return loss, loss

    def step(index: int) -> dict:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * (1.0 + math.cos(math.pi * index / steps)) / 2.0
        return {"train": stepper.step(loss_fn)}

    log = run_steps(["train"], steps, step, runtime, accelerator, timer, "train-classifier", "train",
                    tracked={"batches": batches, "shifts": shifts})
    adapter.denoiser = accelerator.unwrap_model(adapter.denoiser).eval()
    return {"losses": log.as_lists(), "timings": timer.seconds, "device": str(accelerator.device), "steps": steps,
            "is_main_process": accelerator.is_main_process, "num_processes": accelerator.num_processes,
            "process_weight_digests": weight_digests(accelerator, adapter.denoiser)}
