"""Memory and speed of erasure at real parameter counts, on random weights: the evidence for the claim "SFR-on on a
whole SD v1.4-sized UNet within a 24 GB budget", written to docs/scale.md.

No weights can be downloaded, so each model is built from its published config with random init, at a small
resolution: what a run holds (weights, gradients, optimizer state, Fisher sums, mask) depends on the parameter count,
not on the values. Every case runs in a fresh subprocess (`--worker`), so its peak RSS is that run's alone, and calls
the public API, `erase.unlearn`, whose record gives the peak RSS per phase and the sizes of what the run held. Beside
the erasure runs: a plain fine-tuning step of the same denoiser (the speed reference) and, for SD v1.4, the
activation memory of one forward + backward at a few latent sizes, fitted and extrapolated to 512 px for a GPU
memory model.

    python scripts/scale.py                                # every case, then docs/scale.md (needs ~20 GB free RAM)
    python scripts/scale.py --quick --doc /tmp/scale.md    # tiny configs in about 2 minutes: a smoke test
    python scripts/scale.py --cases sd14-sfron sd14-plain  # some cases; the report still covers every cached one

Results are cached in a JSON file (--results), one entry per case: a rerun runs only the cases not finished with the
same settings (--force runs them again) and writes the report from the cache. GB here is 1e9 bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = Path.home() / ".cache" / "erase" / "scale-results.json"
DEFAULT_QUICK_RESULTS = Path.home() / ".cache" / "erase" / "scale-results-quick.json"
DEFAULT_DOC = REPOSITORY / "docs" / "scale.md"
COMMAND = "python scripts/scale.py"
GB = 1e9

# --------------------------------------------------------------------------------------------------------------
# Configs: the published ones (diffusers / transformers defaults for the rest), and tiny ones for --quick.

SD14_PARAMETERS = 859_520_964  # CompVis/stable-diffusion-v1-4 unet/
SD14_UNET = dict(sample_size=16, cross_attention_dim=768, attention_head_dim=8,  # 16 latent px = 128 px images
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
SDXL_UNET = dict(sample_size=16, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, use_linear_projection=True,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu")  # SD v1.x, and SDXL's first text encoder
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                 num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
DIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                sample_size=16, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero")  # 128 px
SD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                    steps_offset=1, clip_sample=False)
SDXL_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                      steps_offset=1, timestep_spacing="leading")  # SDXL base's EulerDiscreteScheduler
DIT_SCHEDULER = dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000,
                     clip_sample=False)  # DiT's training schedule

QUICK_SD_UNET = dict(sample_size=8, cross_attention_dim=32, attention_head_dim=8, block_out_channels=(32, 64),
                     layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
QUICK_SDXL_UNET = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                       transformer_layers_per_block=(1, 2), cross_attention_dim=64, attention_head_dim=(2, 4),
                       addition_embed_type="text_time", addition_time_embed_dim=8,
                       projection_class_embeddings_input_dim=80, use_linear_projection=True, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))  # as tests/test_family_sdxl.py
QUICK_VAE = dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
QUICK_CLIP = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77, projection_dim=32)
QUICK_DIT = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                 sample_size=4, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_num_groups=8)

# --------------------------------------------------------------------------------------------------------------
# Models: a factory per model, random init (seed torch first), assembled as the diffusers pipeline erase takes.


def clip_text(config: dict, scratch: Path, projection: bool = False):
    """A random CLIP text encoder of `config` and the project's character-level CLIP tokenizer (no real vocabulary
    is on disk; erase/pipelines/text.py), 77 tokens as in SD."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from erase.pipelines.text import write_character_vocabulary

    folder = write_character_vocabulary(scratch / "tokenizer")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    assert len(tokenizer) <= config["vocab_size"]
    # the character vocabulary's start and end ids (CLIP pools the hidden state at the end token)
    text_config = CLIPTextConfig(**config, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(text_config), tokenizer


def make_scheduler(scheduler_class, config: dict):
    """Schedulers hold real tensors even when the networks are built on the meta device (for counting parameters)."""
    import torch

    with torch.device("cpu"):
        return scheduler_class(**config)


def sd14(quick: bool, scratch: Path):
    """SD v1.4: UNet 859.5M + VAE 83.7M + CLIP ViT-L/14 text encoder 123.1M."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(**(QUICK_SD_UNET if quick else SD14_UNET))
    if not quick:
        assert sum(p.numel() for p in unet.parameters()) == SD14_PARAMETERS
    text_encoder, tokenizer = clip_text(QUICK_CLIP if quick else CLIP_L, scratch)
    vae = AutoencoderKL(**(QUICK_VAE if quick else SD_VAE))
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler(DDPMScheduler, SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def sdxl(quick: bool, scratch: Path):
    """SDXL base: UNet 2.567B + VAE 83.7M + CLIP ViT-L 123.1M + OpenCLIP ViT-bigG 694.7M text encoders."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(**(QUICK_SDXL_UNET if quick else SDXL_UNET))
    text_encoder, tokenizer = clip_text(QUICK_CLIP if quick else CLIP_L, scratch)
    text_encoder_2, tokenizer_2 = clip_text(QUICK_CLIP if quick else CLIP_BIGG, scratch, projection=True)
    vae = AutoencoderKL(**(QUICK_VAE if quick else SD_VAE))
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=make_scheduler(EulerDiscreteScheduler, SDXL_SCHEDULER),
                                     add_watermarker=False)


def dit(quick: bool, scratch: Path):
    """DiT-XL/2 (diffusers' DiTTransformer2DModel: 749.8M, the paper's 675M plus a timestep and class embedding in
    each of the 28 blocks) + the SD VAE."""
    from diffusers import AutoencoderKL, DDPMScheduler, DiTPipeline, DiTTransformer2DModel

    transformer = DiTTransformer2DModel(**(QUICK_DIT if quick else DIT_XL_2))
    vae = AutoencoderKL(**(QUICK_VAE if quick else SD_VAE))
    return DiTPipeline(transformer=transformer, vae=vae, scheduler=make_scheduler(DDPMScheduler, DIT_SCHEDULER))


MODELS = {"sd14": sd14, "sdxl": sdxl, "dit": dit}
MODEL_NAMES = {"sd14": "SD v1.4", "sdxl": "SDXL base", "dit": "DiT-XL/2"}
# what each model erases and keeps (DiT: ImageNet class ids)
CONDITIONS = {"sd14": ("a photo of a nude person", ["a photo of a person wearing clothes"]),
              "sdxl": ("a photo of a nude person", ["a photo of a person wearing clothes"]),
              "dit": (1, [0, 2])}


def denoiser_of(pipeline):
    return pipeline.transformer if hasattr(pipeline, "transformer") else pipeline.unet


def frozen_parts(pipeline) -> list:
    return [m for m in (getattr(pipeline, name, None) for name in ("vae", "text_encoder", "text_encoder_2"))
            if m is not None]


# --------------------------------------------------------------------------------------------------------------
# Cases: the keys are the --cases choices.

UNLEARN = dict(inplace=True, batch_size=1, images_per_condition=2, generation_steps=2, cpu=True, data="generated")
METHOD_OPTIONS = {  # the smallest statistics each method takes: memory does not depend on how many batches
    "sfron": dict(fisher_batches=2, fisher_batch_size=1),
    "salun": dict(saliency_batches=2),
    "rl": dict(),
    "esd": dict(ddim_steps=4),  # ESD samples x_t with its frozen copy each step (50 DDIM steps in the paper)
}
ACTIVATION_SIZES = {"real": (16, 24, 32), "quick": (8, 12, 16)}  # latent px fitted (x 8 = image px)
ACTIVATION_CHECK = {"real": 64, "quick": 24}  # measured too, not fitted: 512 px itself for SD v1.4


@dataclass
class Case:
    model: str
    run: str  # "unlearn" | "plain" (one fine-tuning step) | "activations" (forward + backward at several sizes)
    method: str | None = None
    train_params: str = "full"
    steps: int = 3
    options: dict = field(default_factory=dict)  # more erase.unlearn keywords


CASES = {
    "sd14-sfron": Case("sd14", "unlearn", "sfron"),
    "sd14-sfron-5steps": Case("sd14", "unlearn", "sfron", steps=5),  # minus the 3-step run: the per-iteration time
    "sd14-sfron-xattn": Case("sd14", "unlearn", "sfron", train_params="xattn"),
    "sd14-sfron-8bit": Case("sd14", "unlearn", "sfron", options={"optimizer_8bit": True}),
    # the state-saving options together: 8-bit Adam and the Fisher a quarter of the parameters at a time (bf16 frozen
    # parts save GPU memory only: on a CPU the caller's fp32 originals stay resident beside the copies)
    "sd14-sfron-lean": Case("sd14", "unlearn", "sfron", options={"optimizer_8bit": True, "fisher_groups": 4}),
    "sd14-salun": Case("sd14", "unlearn", "salun"),
    "sd14-rl": Case("sd14", "unlearn", "rl"),
    "sd14-esd": Case("sd14", "unlearn", "esd"),
    "sd14-plain": Case("sd14", "plain"),
    "sd14-activations": Case("sd14", "activations"),
    "sdxl-sfron-xattn": Case("sdxl", "unlearn", "sfron", train_params="xattn"),
    "dit-sfron": Case("dit", "unlearn", "sfron"),
    "dit-sfron-5steps": Case("dit", "unlearn", "sfron", steps=5),
    "dit-plain": Case("dit", "plain"),
}


def case_spec(case: Case, quick: bool) -> dict:
    """Everything that decides a case's result: a cached entry with another spec is stale."""
    spec = {**dataclasses.asdict(case), "quick": quick}
    if case.run == "unlearn":
        spec["unlearn"] = {**UNLEARN, **METHOD_OPTIONS[case.method], **case.options, "steps": case.steps,
                           "train_params": case.train_params}
    if case.run == "activations":
        spec["sizes"] = list(ACTIVATION_SIZES[mode(quick)]) + [ACTIVATION_CHECK[mode(quick)]]
    return spec


def mode(quick: bool) -> str:
    return "quick" if quick else "real"


# --------------------------------------------------------------------------------------------------------------
# The estimate before a run (a model: parameter counts from a meta-device build, bytes per entry from the engine).

OVERHEAD_BYTES = 0.6e9  # python, torch, diffusers, transformers after import (measured: 0.44 GB) and allocator slack
ACTIVATION_MARGIN_BYTES = 1e9  # activations and temporaries at 128 px, batch 1, gradient checkpointing
RESTORE_CHUNK_BYTES = 2 * (1 << 24) * 4  # erase.engine.MaskedUpdate's two chunk buffers (restore copy, float mask)


def parameter_counts(model: str, train_params: str, quick: bool) -> dict:
    """Parameters of the denoiser, of those `train_params` trains, and of the frozen parts, with no memory used."""
    import torch

    with tempfile.TemporaryDirectory() as scratch, torch.device("meta"):
        pipeline = MODELS[model](quick, Path(scratch))
    denoiser = denoiser_of(pipeline)

    def trained(name: str) -> bool:  # erase's xattn rule: cross-attention, attn2 (erase/pipelines/stable_diffusion.py)
        return train_params == "full" or "attn2" in name

    return {"denoiser": sum(p.numel() for p in denoiser.parameters()),
            "trained": sum(p.numel() for name, p in denoiser.named_parameters() if trained(name)),
            "frozen": sum(p.numel() for m in frozen_parts(pipeline) for p in m.parameters())}


def estimate_peak(case: Case, counts: dict) -> dict:
    """Peak host RSS the case should reach (bytes, a model): fp32 weights of everything, plus the largest phase."""
    denoiser, trained = counts["denoiser"], counts["trained"]
    weights = 4 * (denoiser + counts["frozen"])
    if case.run == "activations":
        phases = {"forward + backward": 4 * denoiser}  # gradients, allocated before measuring
    elif case.run == "plain":
        phases = {"step": 12 * trained}  # gradients 4 B + Adam's two moments 8 B
    else:
        optimizer = 2 * trained if case.options.get("optimizer_8bit") else 8 * trained
        steps = 4 * trained + optimizer  # gradients + optimizer state
        phases = {
            "sfron": {"fisher": 4 * trained + 8 * trained,  # one batch gradient + two fp32 Fisher sums
                      "unlearn": steps + trained + RESTORE_CHUNK_BYTES},  # + bool mask + restore buffer
            "salun": {"mask": 8 * trained + trained, "unlearn": steps + trained + RESTORE_CHUNK_BYTES},
            "rl": {"unlearn": steps},  # its pseudo target comes from the trained model under no_grad: no copy
            "esd": {"unlearn": steps + 4 * denoiser},  # + the frozen copy of the whole denoiser
        }[case.method]
    largest = max(phases, key=phases.get)
    total = weights + phases[largest] + OVERHEAD_BYTES + ACTIVATION_MARGIN_BYTES
    return {"bytes": total, "largest_phase": largest, "weights_bytes": weights, "phase_bytes": phases[largest],
            "counts": counts}


def memory_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reason_to_skip(case: Case, estimate: dict, budget_bytes: float) -> str | None:
    """Why the case cannot run now, or None (a skipped case is tried again on the next run)."""
    import importlib.util

    if case.options.get("optimizer_8bit") and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes not installed (pip install bitsandbytes)"
    if estimate["bytes"] > budget_bytes:
        return (f"estimated peak {estimate['bytes'] / GB:.1f} GB > the {budget_bytes / GB:.0f} GB budget "
                f"(--budget-gb)")
    available = memory_available()
    if available is not None and estimate["bytes"] > available - 0.5e9:
        return f"estimated peak {estimate['bytes'] / GB:.1f} GB > {available / GB:.1f} GB available now"
    return None


# --------------------------------------------------------------------------------------------------------------
# Workers: each runs in its own process (`--worker CASE`) and returns a JSON-able dict.


def release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc malloc_trim), so an RSS baseline is not inflated by them."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_unlearn(case: Case, pipeline, quick: bool) -> dict:
    """erase.unlearn, the public API, as a user calls it; its record has the memory per phase and the timings."""
    import erase

    forget, retain = CONDITIONS[case.model]
    options = {**UNLEARN, **METHOD_OPTIONS[case.method], **case.options}
    started = time.perf_counter()
    _, record = erase.unlearn(pipeline, forget=forget, remain=retain, method=case.method, steps=case.steps,
                              train_params=case.train_params, **options)
    memory = record.get("memory") or {}
    return {"seconds": time.perf_counter() - started, "memory": memory, "timings": record["timings"],
            "phases": {name: peak["peak_rss_bytes"] for name, peak in memory.get("phases", {}).items()},
            "gradient_checkpointing": record.get("gradient_checkpointing"),
            "mask_sparsity": (record.get("mask_sparsity") or {}).get("overall"),
            "final_losses": {name: log["value"][-1] for name, log in record["losses"].items() if log["value"]}}


def text_condition(pipeline, prompt: str):
    """The UNet's encoder_hidden_states for `prompt`, as StableDiffusionPipeline conditions it: (1, 77, D)."""
    import torch

    tokens = pipeline.tokenizer([prompt], padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
    with torch.no_grad():
        return pipeline.text_encoder(tokens.input_ids)[0]


def denoising_loss(case: Case, pipeline, images):
    """diffusers' train_text_to_image.py step: VAE latents, noise, a random timestep, MSE of the noise prediction
    (DiT: its noise half, L_simple), text conditioning from the text encoder (DiT: a class id)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        latents = pipeline.vae.encode(images).latent_dist.sample() * pipeline.vae.config.scaling_factor
    noise = torch.randn_like(latents)  # (1, 4, h, w)
    timesteps = torch.randint(0, pipeline.scheduler.config.num_train_timesteps, (latents.shape[0],))
    noisy_latents = pipeline.scheduler.add_noise(latents, noise, timesteps)
    if case.model == "dit":
        class_labels = torch.tensor([CONDITIONS["dit"][0]])
        prediction = pipeline.transformer(noisy_latents, timestep=timesteps, class_labels=class_labels).sample
        prediction = prediction[:, : latents.shape[1]]  # (1, 4, h, w): the noise half of (noise, variance)
    else:
        encoder_hidden_states = text_condition(pipeline, CONDITIONS[case.model][0])
        prediction = pipeline.unet(noisy_latents, timesteps, encoder_hidden_states).sample
    return F.mse_loss(prediction.float(), noise.float())


def run_plain(case: Case, pipeline, quick: bool) -> dict:
    """One plain fine-tuning step of the whole denoiser (fp32 fused Adam, gradient clipping at 1 as diffusers'
    train_text_to_image.py, batch 1, the same gradient checkpointing as erase.unlearn's default): median of 3 steps
    after 1 warm-up, and the peak RSS over them."""
    import torch

    from erase.api import use_gradient_checkpointing
    from erase.memory import peak_rss, reset_peak_rss, tensor_bytes

    denoiser = denoiser_of(pipeline).train().requires_grad_(True)
    for module in frozen_parts(pipeline):
        module.requires_grad_(False).eval()
    checkpointing = use_gradient_checkpointing(denoiser, None)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-5, fused=True)  # erase.engine.make_optimizer's kernel
    size = denoiser.config.sample_size * 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    images = torch.rand(1, 3, size, size) * 2 - 1  # (1, 3, H, W) in [-1, 1]
    reset_peak_rss()
    seconds = []
    for _ in range(4):
        started = time.perf_counter()
        denoising_loss(case, pipeline, images).backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)  # train_text_to_image's --max_grad_norm default
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - started)
    floor = (2 * tensor_bytes(denoiser.parameters())  # weights and their gradients
             + tensor_bytes(v for state in optimizer.state.values() for v in state.values())
             + tensor_bytes(p for m in frozen_parts(pipeline) for p in m.parameters()))
    return {"step_seconds": statistics.median(seconds[1:]), "all_step_seconds": seconds,
            "phases": {"steps": peak_rss()}, "floor_bytes": floor, "gradient_checkpointing": checkpointing,
            "image_size": size,
            "trained_parameters": sum(p.numel() for p in denoiser.parameters())}


def run_activations(case: Case, pipeline, quick: bool) -> dict:
    """Peak RSS increase of one forward + backward of the UNet with gradient checkpointing, batch 1, per latent size
    (gradients allocated beforehand, so the increase is activations and temporaries only)."""
    import gc

    import torch

    from erase.api import use_gradient_checkpointing
    from erase.memory import current_rss, peak_rss, reset_peak_rss

    unet = pipeline.unet.train().requires_grad_(True)
    use_gradient_checkpointing(unet, True)
    encoder_hidden_states = text_condition(pipeline, CONDITIONS[case.model][0])  # (1, 77, D)
    for p in unet.parameters():
        p.grad = torch.zeros_like(p)
    sizes = ACTIVATION_SIZES[mode(quick)]
    points = []
    for size in (sizes[0], *sizes, ACTIVATION_CHECK[mode(quick)]):  # the first is a warm-up, not recorded
        latents = torch.randn(1, unet.config.in_channels, size, size)
        gc.collect()
        release_freed_memory()
        reset_peak_rss()
        baseline = current_rss()
        started = time.perf_counter()
        unet(latents, torch.tensor([500]), encoder_hidden_states).sample.float().pow(2).mean().backward()
        points.append({"latent_size": size, "image_size": 8 * size, "activation_bytes": peak_rss() - baseline,
                       "baseline_rss_bytes": baseline, "seconds": time.perf_counter() - started})
    peak = max(p["baseline_rss_bytes"] + p["activation_bytes"] for p in points)
    return {"fitted": points[1:-1], "check": points[-1], "parameters": sum(p.numel() for p in unet.parameters()),
            "phases": {"forward + backward": peak}}


WORKERS = {"unlearn": run_unlearn, "plain": run_plain, "activations": run_activations}


def worker(name: str, quick: bool, out: Path) -> None:
    """Build the case's model and run it; the peak RSS of building counts from the process start (the phases after
    it reset the kernel's peak counter at their start, erase/memory.py)."""
    import torch

    from erase.memory import peak_rss

    case = CASES[name]
    torch.manual_seed(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="erase-scale-") as scratch:
        pipeline = MODELS[case.model](quick, Path(scratch))
        build = {"build_seconds": time.perf_counter() - started, "build_peak_rss_bytes": peak_rss()}
        result = WORKERS[case.run](case, pipeline, quick)
    out.write_text(json.dumps({**result, **build}, default=str))


# --------------------------------------------------------------------------------------------------------------
# The driver: one subprocess per case, results cached.


def machine() -> dict:
    import platform

    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "memory_bytes": memory, "platform": platform.platform()}


def run_case(name: str, quick: bool, log: Path) -> dict:
    """Run CASES[name] in a fresh Python process, so the peaks it reads are its own."""
    with tempfile.TemporaryDirectory(prefix="erase-scale-") as scratch:
        out = Path(scratch) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-out", str(out)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        started = time.perf_counter()
        with open(log, "w") as handle:
            process = subprocess.run(command + (["--quick"] if quick else []), stdout=handle, stderr=subprocess.STDOUT,
                                     env=env, cwd=REPOSITORY)
        seconds = time.perf_counter() - started
        if process.returncode != 0 or not out.is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            return {"status": "failed", "returncode": process.returncode, "log": str(log), "log_tail": tail,
                    "wall_seconds": seconds}
        return {"status": "done", "result": json.loads(out.read_text()), "wall_seconds": seconds, "log": str(log)}


def largest_peak(result: dict) -> int:
    """The largest peak RSS of a worker's run: building the model, or a phase after it."""
    return max(result["build_peak_rss_bytes"], *result["phases"].values())


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"cases": {}}


def save_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    staging.write_text(json.dumps(results, indent=1, default=str))
    os.replace(staging, path)


def run_cases(names: list[str], args) -> dict:
    results = load_results(args.results)
    logs = args.results.with_name(args.results.stem + "-logs")
    counts = {}
    for name in names:
        case, spec = CASES[name], case_spec(CASES[name], args.quick)
        cached = results["cases"].get(name)
        finished = cached is not None and cached["status"] == "done" and cached["spec"] == spec
        if finished and not (args.force or args.estimate_only):
            print(f"{name}: cached ({cached['finished']})")
            continue
        key = (case.model, case.train_params)
        if key not in counts:
            counts[key] = parameter_counts(case.model, case.train_params, args.quick)
        estimate = estimate_peak(case, counts[key])
        reason = reason_to_skip(case, estimate, args.budget_gb * GB)
        if args.estimate_only:
            print(f"{name}: estimated peak {estimate['bytes'] / GB:.1f} GB ({estimate['largest_phase']} phase); "
                  f"{'would run' if reason is None else 'would skip: ' + reason}")
            continue
        entry = {"spec": spec, "estimate": estimate, "finished": datetime.datetime.now().isoformat(timespec="seconds"),
                 "machine": machine()}
        if reason is not None:
            print(f"{name}: skipped, {reason}")
            if not finished:  # --force on a machine that is short of memory now keeps the earlier result
                results["cases"][name] = {**entry, "status": "skipped", "reason": reason}
        else:
            print(f"{name}: running (estimated peak {estimate['bytes'] / GB:.1f} GB) ...", flush=True)
            logs.mkdir(parents=True, exist_ok=True)
            outcome = run_case(name, args.quick, logs / f"{name}.log")
            entry["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
            results["cases"][name] = {**entry, **outcome}
            print(f"{name}: {outcome['status']} in {outcome['wall_seconds']:.0f} s"
                  + (f", peak RSS {largest_peak(outcome['result']) / GB:.2f} GB" if outcome["status"] == "done"
                     else f"; log: {outcome['log']}"), flush=True)
        save_results(args.results, results)
    return results


# --------------------------------------------------------------------------------------------------------------
# The report.


def fit_activations(points: list[dict]) -> dict:
    """Least squares of activation bytes on latent pixels n: linear a + b n, and with >= 3 points a + b n + c n^2
    (attention's score matrix would be quadratic if it were kept); the linear fit is used unless it misses a
    measured point by more than 10% of the largest."""
    import numpy as np

    n = np.array([p["latent_size"] ** 2 for p in points], dtype=float)
    y = np.array([p["activation_bytes"] for p in points], dtype=float)
    linear = np.polyfit(n, y, 1)
    fits = {"linear": {"coefficients": linear[::-1].tolist(),
                       "worst_residual_bytes": float(np.abs(np.polyval(linear, n) - y).max())}}
    if len(points) >= 3:
        quadratic = np.polyfit(n, y, 2)
        fits["quadratic"] = {"coefficients": quadratic[::-1].tolist(),
                             "worst_residual_bytes": float(np.abs(np.polyval(quadratic, n) - y).max())}
    misses = fits["linear"]["worst_residual_bytes"] > 0.1 * y.max()
    chosen = "quadratic" if misses and "quadratic" in fits and fits["quadratic"]["coefficients"][2] > 0 else "linear"
    return {"fits": fits, "chosen": chosen}


def predict(fit: dict, latent_size: int) -> float:
    n = latent_size ** 2
    return sum(c * n ** k for k, c in enumerate(fit["coefficients"]))


def gpu_model(counts: dict, activation_fp32: float, latent_size: int) -> tuple[list[tuple[str, str, float]], dict]:
    """SFR-on, whole SD v1.4 UNet, batch 1, gradient checkpointing, bf16 autocast over fp32 weights, with
    `activation_fp32` bytes of activations at `latent_size` (fp32, CPU): rows (item, how, bytes) of the unlearn
    phase, and the phase totals."""
    p, frozen = counts["denoiser"], counts["frozen"]
    activation = activation_fp32 / 2  # assumption: bf16 activations take half the fp32 bytes measured on the CPU
    rows = [
        ("weights", "fp32, 4 B/param", 4 * p),
        ("gradients", "fp32, 4 B/param", 4 * p),
        ("Adam state", "two fp32 moments, 8 B/param", 8 * p),
        ("saliency mask", "bool, 1 B/param", p),
        ("masked-update buffers", "MaskedUpdate's restore copy and float mask chunk, CHUNK_ENTRIES fp32 each",
         RESTORE_CHUNK_BYTES),
        ("frozen VAE + text encoder", f"bf16 (--frozen-dtype auto on a GPU), 2 B x {frozen / 1e6:.1f}M", 2 * frozen),
        ("autocast weight copies", "bf16 casts of the fp32 weights, which torch autocast caches until the forward "
                                   "returns: 2 B/param (conservative: added to the activations, which peak in the "
                                   "backward)", 2 * p),
        (f"activations, {8 * latent_size} px", f"the fit's CPU fp32 bytes at {latent_size}x{latent_size} latents, "
                                               "halved for bf16 (assumption)", activation),
    ]
    unlearn = sum(b for _, _, b in rows)
    # Fisher phase: no optimizer state or mask yet; one batch gradient and two fp32 Fisher sums; the guided Fisher
    # loss evaluates the UNet on the condition and the null condition (assumption: twice the activations)
    fisher = 4 * p + 4 * p + 8 * p + 2 * frozen + 2 * p + 2 * activation
    return rows, {"unlearn": unlearn, "fisher": fisher}


def millions(count: int) -> str:
    return f"{count / 1e6:,.1f}M" if count >= 1e6 else f"{count:,}"


def gb(value) -> str:
    return "-" if value is None else f"{value / GB:.2f}"


def seconds_text(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def options_text(case: Case) -> str:
    parts = [f"train_params={case.train_params}"] if case.train_params != "full" else []
    parts += [f"{k}={v}" for k, v in {**METHOD_OPTIONS.get(case.method, {}), **case.options}.items()]
    return ", ".join([f"steps={case.steps}", *parts])


def iteration_seconds(results: dict, name: str) -> tuple[float | None, float | None]:
    """(unlearn seconds / steps, steady-state seconds per iteration from the 5-step run minus this one, / 2)."""
    entry = results["cases"].get(name)
    if not entry or entry["status"] != "done" or CASES[name].run != "unlearn":
        return None, None
    case = CASES[name]
    unlearn = entry["result"]["timings"].get("unlearn")
    per_step = unlearn / case.steps if unlearn is not None else None
    longer = results["cases"].get(f"{name}-5steps")
    steady = None
    if longer and longer["status"] == "done" and unlearn is not None:
        steady = (longer["result"]["timings"]["unlearn"] - unlearn) / (CASES[f"{name}-5steps"].steps - case.steps)
    return per_step, steady


def plain_seconds(results: dict, model: str) -> float | None:
    entry = results["cases"].get(f"{model}-plain")
    return entry["result"]["step_seconds"] if entry and entry["status"] == "done" else None


def unlearn_rows(results: dict) -> list[str]:
    lines = ["| case | model | denoiser parameters total / trained | method | options | peak RSS GB: build / data / "
             "fisher / mask / unlearn (measured) | estimate GB (model) | floor GB | peak / floor | s per iteration | "
             "plain fine-tune step s | ratio |", "| --- " * 12 + "|"]
    for name, case in CASES.items():
        if case.run != "unlearn":
            continue
        entry = results["cases"].get(name)
        cells = [name, MODEL_NAMES[case.model], "-", case.method, options_text(case)]
        if entry is None:
            lines.append("| " + " | ".join(cells + ["not run"] + [""] * 6) + " |")
            continue
        counts = entry["estimate"]["counts"]
        cells[2] = f"{millions(counts['denoiser'])} / {millions(counts['trained'])}"
        estimate = gb(entry["estimate"]["bytes"])
        if entry["status"] != "done":
            why = entry.get("reason") or f"exit {entry.get('returncode')}, log {entry.get('log')}"
            lines.append("| " + " | ".join(cells + [f"{entry['status']}: {why}", estimate] + [""] * 5) + " |")
            continue
        result = entry["result"]
        phases = ("data", "fisher", "mask", "unlearn")
        peaks = [result["build_peak_rss_bytes"], *(result["phases"].get(phase) for phase in phases)]
        floor = result["memory"].get("sizes", {}).get("floor_bytes")
        ratio = max(result["phases"].values()) / floor if floor else None
        per_step, steady = iteration_seconds(results, name)
        step = steady if steady is not None else per_step
        plain = plain_seconds(results, case.model) if case.train_params == "full" else None
        cells += [" / ".join(gb(p) for p in peaks), estimate, gb(floor), "-" if ratio is None else f"{ratio:.2f}",
                  seconds_text(per_step) + (f" ({steady:.2f} steady)" if steady is not None else ""),
                  seconds_text(plain), "-" if plain is None or step is None else f"{step / plain:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plain_rows(results: dict) -> list[str]:
    lines = ["| case | model | trained parameters | image px | gradient checkpointing | step s (median of 3, "
             "measured) | each step s | peak RSS GB: build / steps (measured) | floor GB | peak / floor |",
             "| --- " * 10 + "|"]
    for name, case in CASES.items():
        if case.run != "plain":
            continue
        entry = results["cases"].get(name)
        if entry is None or entry["status"] != "done":
            lines.append(f"| {name} | {MODEL_NAMES[case.model]} | {entry['status'] if entry else 'not run'} |"
                         + " |" * 7)
            continue
        r = entry["result"]
        peak = r["phases"]["steps"]
        lines.append(f"| {name} | {MODEL_NAMES[case.model]} | {millions(r['trained_parameters'])} | "
                     f"{r['image_size']} | {r['gradient_checkpointing']} | {r['step_seconds']:.2f} | "
                     f"{', '.join(f'{s:.2f}' for s in r['all_step_seconds'])} | {gb(r['build_peak_rss_bytes'])} / "
                     f"{gb(peak)} | {gb(r['floor_bytes'])} | {peak / r['floor_bytes']:.2f} |")
    return lines


def activation_section(results: dict, quick: bool) -> list[str]:
    entry = results["cases"].get("sd14-activations")
    if entry is None or entry["status"] != "done":
        return ["The activation case (sd14-activations) has not run: "
                + (entry.get("reason") or entry["status"] if entry else "not in the cache") + "."]
    result = entry["result"]
    fit = fit_activations(result["fitted"])
    chosen = fit["fits"][fit["chosen"]]
    target = 64 if not quick else ACTIVATION_CHECK["quick"]
    activation_512 = predict(chosen, target)
    check = result["check"]
    lines = [f"Peak RSS increase of one forward + backward of the {millions(result['parameters'])}-parameter UNet, "
             "batch 1, gradient checkpointing, fp32 on the CPU, gradients allocated beforehand (measured):", "",
             "| latent px | image px | activation GB (measured) | seconds | used |", "| --- | --- | --- | --- | --- |"]
    for point in result["fitted"]:
        lines.append(f"| {point['latent_size']} | {point['image_size']} | {gb(point['activation_bytes'])} | "
                     f"{point['seconds']:.1f} | fitted |")
    lines.append(f"| {check['latent_size']} | {check['image_size']} | {gb(check['activation_bytes'])} | "
                 f"{check['seconds']:.1f} | check, not fitted |")
    lines.append("")
    for kind, values in fit["fits"].items():
        terms = " + ".join(f"{c:.4g} n^{k}" if k else f"{c:.4g}" for k, c in enumerate(values["coefficients"]))
        lines.append(f"- {kind} fit (model): bytes = {terms} (n = latent pixels); worst residual "
                     f"{values['worst_residual_bytes'] / GB:.3f} GB; at {target}x{target} latents: "
                     f"{predict(values, target) / GB:.2f} GB")
    lines += [f"- Used: the {fit['chosen']} fit (the linear one unless it misses a fitted point by more than 10% of "
              f"the largest); it predicts {activation_512 / GB:.2f} GB at {target}x{target} latents against "
              f"{check['activation_bytes'] / GB:.2f} GB measured there.", ""]
    counts = entry["estimate"]["counts"]
    rows, phases = gpu_model(counts, activation_512, target)
    lines += [f"Predicted GPU peak (model) for SFR-on on the whole UNet ({counts['denoiser']:,} parameters), "
              f"{8 * target} px, batch 1, gradient checkpointing, bf16 autocast with fp32 weights:", "",
              "| item | how | GB (model) |", "| --- | --- | --- |"]
    lines += [f"| {item} | {how} | {gb(value)} |" for item, how, value in rows]
    lines.append(f"| **unlearn phase** | sum | **{gb(phases['unlearn'])}** |")
    lines.append(f"| Fisher phase | weights, batch gradient 4 B, two fp32 Fisher sums 8 B, frozen bf16, autocast "
                 f"copies, twice the activations (guided loss: condition and null) | {gb(phases['fisher'])} |")
    peak = max(phases.values())
    lines += ["", f"Predicted GPU peak: **{peak / GB:.2f} GB** (model), target <= 20 GB: "
              f"**{'met' if peak <= 20 * GB else 'not met'}**. Not counted: the CUDA context (a few hundred MB outside "
              "torch's allocator) and the caching allocator's fragmentation (reserved minus allocated)."]
    return lines


def sdxl_section(results: dict, budget_bytes: float) -> list[str]:
    entry = results["cases"].get("sdxl-sfron-xattn")
    if entry is None:
        return ["sdxl-sfron-xattn is not in the cache."]
    counts = entry["estimate"]["counts"]
    p, frozen, xattn = counts["denoiser"], counts["frozen"], counts["trained"]
    whole = 4 * (p + frozen) + 4 * p + 8 * p
    attention = 4 * (p + frozen) + 4 * xattn + 8 * xattn
    lines = [f"SDXL base (model): UNet {p:,} parameters, of which cross-attention (attn2, `train_params=\"xattn\"`) "
             f"{xattn:,}; frozen VAE and two text encoders {frozen:,}.", "",
             "- whole-UNet floor on the CPU, fp32 weights of everything + gradients 4 B + Adam 8 B per UNet "
             "parameter: "
             f"{gb(whole)} GB" + (f", over the {budget_bytes / GB:.0f} GB budget: not run." if whole > budget_bytes
                                  else "."),
             f"- xattn floor: {gb(attention)} GB; estimated peak with Fisher sums, mask, overhead and activations "
             f"{gb(entry['estimate']['bytes'])} GB."]
    if entry["status"] == "done":
        lines.append("- sdxl-sfron-xattn ran: the table above has its measured peaks.")
    else:
        lines.append(f"- sdxl-sfron-xattn {entry['status']}: {entry.get('reason') or entry.get('log')}.")
    return lines


def write_doc(results: dict, path: Path, quick: bool, results_path: Path, budget_bytes: float) -> None:
    machines = {json.dumps(e["machine"], sort_keys=True) for e in results["cases"].values() if "machine" in e}
    dates = sorted(e["finished"] for e in results["cases"].values())
    per_step, steady = iteration_seconds(results, "sd14-sfron")
    plain = plain_seconds(results, "sd14")
    resolution = "the tiny configs' 8 to 16 px" if quick else "128 px (16x16 latents)"
    lines = [
        "# Erasure at scale: memory and speed at real parameter counts",
        "",
        f"Generated by `{COMMAND}{' --quick' if quick else ''}` (scripts/scale.py) from the cached results in "
        f"`{results_path}`; do not edit by hand. " + ("**Quick mode: tiny configs, a smoke test, not the real models.**"
                                                      if quick else ""),
        "",
        "Issue 25: SFR-on on a whole SD v1.4-sized UNet within a 24 GB budget. Every model is built from its published "
        f"config with random weights (nothing can be downloaded) at {resolution} and erased by "
        "`erase.unlearn` on the CPU in a fresh process per case: forget \"a photo of a nude person\", retain \"a photo "
        "of a person wearing clothes\" (DiT: class 1, retain 0 and 2), data generated by the model itself (2 images "
        "per condition, 2 sampling steps), batch 1, Fisher / saliency over 2 batches, gradient checkpointing at "
        "erase's default (on from 300M parameters). Memory does not depend on the weights' values; time depends on "
        f"the resolution, so the times are for {resolution} on this machine's CPU.",
        "",
        "GB = 1e9 bytes. \"measured\": read from the run (peak RSS per phase from the run record's `memory.phases`, "
        "reset at each phase start; build: building the model, from the process start). "
        "\"model\": computed from parameter counts and bytes per entry. Floor = weights + gradients + optimizer "
        "state + frozen parts (`memory.sizes.floor_bytes`); peak / floor = the largest phase peak over it. ESD's "
        "frozen copy of the UNet is not part of the recorded floor.",
        "",
        "## Erasure runs",
        "",
        *unlearn_rows(results),
        "",
        "s per iteration: the unlearn phase's seconds / iterations, which include the first iteration's "
        "allocation of the optimizer state and gradients; \"steady\": (5-iteration run - 3-iteration run) / 2, "
        "which leaves them out, and is what the ratio uses where present. An SFR-on iteration is a masked forget "
        "step plus a remain step; target: <= 2.2 x the plain fine-tuning step.",
    ]
    if per_step is not None and plain:
        step = steady if steady is not None else per_step
        lines += ["", f"SD v1.4 SFR-on: {step:.2f} s per iteration ({'steady' if steady is not None else 'per step'}) "
                      f"against {plain:.2f} s per plain fine-tuning step: **{step / plain:.2f} x** (target <= 2.2 x: "
                      f"**{'met' if step / plain <= 2.2 else 'not met'}**)."]
    lines += [
        "",
        "## Plain fine-tuning step (the speed reference)",
        "",
        "diffusers' train_text_to_image.py step on the same denoiser, resolution, batch 1 and gradient checkpointing: "
        "VAE latents and text encoding under no_grad, MSE of the noise prediction (DiT: its noise half), backward, "
        "gradient clipping at norm 1 (the script's default), fp32 `torch.optim.Adam(fused=True)` step (the kernel "
        "erase's own steps use).",
        "",
        *plain_rows(results),
        "",
        "## SD v1.4 at 512 px: activation and GPU memory model",
        "",
        *activation_section(results, quick),
        "",
        "## SDXL",
        "",
        *sdxl_section(results, budget_bytes),
        "",
        "## Machine",
        "",
    ]
    for text in sorted(machines):
        m = json.loads(text)
        lines.append(f"- {m['cpu_count']} CPUs ({m['torch_threads']} torch threads), {m['memory_bytes'] / GB:.1f} GB "
                     f"RAM, torch {m['torch']}, Python {m['python']}, {m['platform']}")
    if dates:
        lines.append(f"- runs finished {dates[0]} to {dates[-1]}; written {datetime.date.today().isoformat()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                        help="cases to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny configs (about 2 minutes): a smoke test; writes "
                        "no report unless --doc is given")
    parser.add_argument("--results", type=Path, default=None, help=f"cache of results (default {DEFAULT_RESULTS}; "
                        f"with --quick {DEFAULT_QUICK_RESULTS})")
    parser.add_argument("--doc", type=Path, default=None,
                        help="report to write (default docs/scale.md; none in quick mode)")
    parser.add_argument("--force", action="store_true", help="run the chosen cases again even when cached")
    parser.add_argument("--budget-gb", type=float, default=20.0, help="skip a case whose estimated peak RSS exceeds "
                        "this (default 20)")
    parser.add_argument("--estimate-only", action="store_true", help="print each case's estimated peak RSS (from "
                        "a meta-device build: no memory, seconds) and run nothing")
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.quick, args.worker_out)
        return
    args.results = args.results or (DEFAULT_QUICK_RESULTS if args.quick else DEFAULT_RESULTS)
    results = run_cases(args.cases, args)
    if args.estimate_only:
        return
    doc = args.doc or (None if args.quick else DEFAULT_DOC)
    if doc is not None:
        write_doc(results, doc, args.quick, args.results, args.budget_gb * GB)
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
