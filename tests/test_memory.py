"""Memory near the floor: float32 Fisher sums within the stated tolerance of float64 ones, a mask that
consumes the Fishers, a chunked masked update equal to one whole step, and run.json's per-phase memory record."""

import copy
import json
import sys

import pytest
import torch

import erase
from erase.data import digits
from erase.engine import MaskedUpdate, Runtime, Stepper, make_accelerator
from erase.memory import PhaseMemory
from erase.objectives import denoising_losses
from erase.saliency import FISHER_RTOL_PER_BATCH, fisher_diagonal, saliency_mask, trainable_parameters
from tests.conftest import tiny_adapter


def test_float32_fisher_sums_are_within_n_half_ulps_of_float64_sums():
    """8 clipped batches: the reference squares each batch gradient (clipped to norm 1 with a float64 norm, as the
    official DDPM code clips) in float64 and sums in float64, here in the test. Each fp32 addition rounds by at
    most half an ulp and the final division by one more, so |F32 - F64| <= (N + 1) 2^-24 F64 entry by entry."""
    adapter = tiny_adapter()
    data = digits(8)
    batches = [(data.images[i * 8:(i + 1) * 8], data.labels[i * 8:(i + 1) * 8]) for i in range(8)]
    torch.manual_seed(3)
    fisher = fisher_diagonal(adapter, iter(batches), num_batches=8, max_grad_norm=1.0, reduction="sum")

    torch.manual_seed(3)  # the same noise and timesteps as inside fisher_diagonal
    params = trainable_parameters(adapter.denoiser)
    reference = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
    for images, labels in batches:
        noise, timesteps = adapter.draw(images)
        loss = denoising_losses(adapter, images, labels, timesteps, noise, reduction="sum").mean()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params.values())]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        scale = (1.0 / (norm + 1e-6)).clamp(max=1.0).float()
        for name, g in zip(params, grads):
            reference[name] += (g * scale).double() ** 2  # (float32 g * float32 scale) as the code forms it
    tolerance = (8 + 1) * FISHER_RTOL_PER_BATCH
    worst = 0.0
    for name in params:
        expected = reference[name] / 8
        error = (fisher[name].double() - expected).abs()
        assert fisher[name].dtype == torch.float32
        assert bool((error <= tolerance * expected + 1e-45).all()), name
        worst = max(worst, float((error / expected.clamp_min(1e-38)).max()))
    assert worst > 0.0, "float32 sums rounded nowhere: the comparison would not see a float64 shortcut either"


def test_a_consuming_mask_equals_the_plain_mask_and_frees_both_fishers():
    generator = torch.Generator().manual_seed(0)
    forget = {"a": torch.rand(64, 32, generator=generator), "b": torch.rand(7, generator=generator) * 1e-20}
    remain = {"a": torch.rand(64, 32, generator=generator), "b": torch.rand(7, generator=generator) * 1e-20}
    expected = {name: (forget[name].double() + 1e-15) / (remain[name].double() + 1e-15) >= 1.3 for name in forget}
    plain = saliency_mask(forget, remain, 1.3)
    consumed = saliency_mask(copy.deepcopy(forget), remain_copy := copy.deepcopy(remain), 1.3, consume=True)
    assert remain_copy == {}
    for name in forget:
        assert torch.equal(plain[name], consumed[name])
        agree = float((plain[name] == expected[name]).float().mean())
        assert agree == 1.0, name  # no entry of these random ratios sits within fp32 rounding of 1.3


def test_chunked_masked_step_equals_one_whole_adam_step_with_mask_zero_entries_put_back():
    """The reference is built here: plain torch Adam on a copy with the gradient masked, then every mask-0 entry
    set back by torch.where. Chunks of 300 entries split the tiny UNet's tensors into dozens of optimizer steps."""
    adapter = tiny_adapter()
    models = {"chunked": adapter.denoiser, "reference": copy.deepcopy(adapter.denoiser)}
    params = trainable_parameters(models["chunked"])
    reference = trainable_parameters(models["reference"])
    torch.manual_seed(0)
    mask = {name: torch.rand_like(p) < 0.5 for name, p in params.items()}
    mask["conv_in.bias"] = torch.ones_like(mask["conv_in.bias"])  # an all-ones tensor steps outside the chunks
    images, labels = digits(8).images[:16], digits(8).labels[:16]

    def loss(model: str, sign: float, seed: int) -> torch.Tensor:
        adapter.denoiser = models[model]
        torch.manual_seed(seed)
        return sign * denoising_losses(adapter, images, labels).mean()

    optimizer = torch.optim.Adam(params.values(), lr=1e-2, fused=True)  # as erase builds it (make_optimizer)
    stepper = Stepper(make_accelerator(Runtime(seed=0)), models["chunked"], optimizer, max_grad_norm=None)
    masked = MaskedUpdate(params, mask, chunk_entries=300)
    assert len(masked.chunks) > 10
    stepper.step(lambda: (lambda l: (l, l))(loss("chunked", 1.0, 1)))  # an unmasked step: momentum everywhere
    stepper.step(lambda: (lambda l: (l, l))(loss("chunked", -1.0, 2)), masked)

    reference_optimizer = torch.optim.Adam(reference.values(), lr=1e-2, fused=True)
    for sign, seed in ((1.0, 1), (-1.0, 2)):
        reference_optimizer.zero_grad()
        loss("reference", sign, seed).backward()
        before = {name: p.detach().clone() for name, p in reference.items()}
        with torch.no_grad():
            if seed == 2:
                for name, p in reference.items():
                    p.grad.mul_(mask[name])
            reference_optimizer.step()
            if seed == 2:
                for name, p in reference.items():
                    p.copy_(torch.where(mask[name], p, before[name]))
    for name, p in params.items():
        assert torch.equal(p, reference[name]), name
        state, expected = optimizer.state[p], reference_optimizer.state[reference[name]]
        assert torch.equal(state["exp_avg_sq"], expected["exp_avg_sq"]), name
        assert int(state["step"]) == int(expected["step"]) == 2, name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-phase peaks reset through /proc (Linux)")
def test_phase_peaks_reset_between_phases():
    """400 MB touched in one phase must show in its peak and not in the next phase's."""
    meter = PhaseMemory("cpu")
    meter.start()
    big = torch.ones(100_000_000)  # 400 MB, written so every page is resident
    del big
    meter.stop("big")
    meter.start()
    meter.stop("small")
    assert meter.resettable
    assert meter.peaks["big"]["peak_rss_bytes"] - meter.peaks["small"]["peak_rss_bytes"] > 350e6


def test_run_json_records_memory_per_phase_and_the_sizes_the_run_held(tmp_path):
    erase.unlearn(erase.SHIPPED_MODEL, forget=7, data="digits", steps=2, fisher_batches=1, batch_size=4,
                  out=tmp_path / "out")
    memory = json.loads((tmp_path / "out" / "run.json").read_text())["memory"]
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(erase.SHIPPED_MODEL / "unet")
    entries = sum(p.numel() for p in unet.parameters())
    sizes = memory["sizes"]
    assert sizes["trained_parameters"] == entries
    assert sizes["gradients_bytes"] == 4 * entries
    assert sizes["fisher_bytes"] == 2 * 4 * entries  # forget + remain, float32
    assert sizes["mask_bytes"] == entries  # bool
    tensors = len(list(unet.parameters()))
    assert 8 * entries <= sizes["optimizer_state_bytes"] <= 8 * entries + 8 * tensors  # Adam's two moments + steps
    assert sizes["floor_bytes"] == (sizes["weights_bytes"] + sizes["gradients_bytes"]
                                    + sizes["optimizer_state_bytes"] + sizes["frozen_bytes"])
    assert set(memory["phases"]) >= {"data", "fisher", "mask", "unlearn"}
    for phase, peaks in memory["phases"].items():
        assert peaks["peak_rss_bytes"] > sizes["weights_bytes"], phase


def test_bisected_salun_threshold_equals_the_top_k_threshold():
    """Reference: torch.topk over every score concatenated (the form the bisection replaces), with ties, zeros and
    scores spanning 30 decades."""
    from erase.saliency import top_fraction_mask

    generator = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(1000, generator=generator) * 10.0 ** torch.randint(-30, 1, (1000,), generator=generator),
              "b": torch.randint(0, 4, (30, 10), generator=generator).float(), "c": torch.zeros(5)}
    flat = torch.cat([s.flatten() for s in scores.values()])
    for fraction in (0.001, 0.1, 0.37, 0.5, 0.9, 1.0):
        keep = max(1, round(fraction * flat.numel()))
        threshold = torch.topk(flat, keep).values.min()
        mask = top_fraction_mask(scores, fraction)
        for name, s in scores.items():
            assert torch.equal(mask[name], s >= threshold), (fraction, name)


def test_the_8bit_optimizer_holds_a_quarter_of_adams_state_and_still_erases(tmp_path):
    """bitsandbytes' Adam8bit keeps each moment in 1 byte per entry (plus a float32 scale per 256-entry block and
    float32 states for tensors under 4096 entries), against Adam's 4: asserted at most 40% of 8 bytes per entry."""
    pytest.importorskip("bitsandbytes")
    _, record = erase.unlearn(erase.SHIPPED_MODEL, forget=7, data="digits", steps=2, fisher_batches=1, batch_size=4,
                              optimizer_8bit=True)
    sizes = record["memory"]["sizes"]
    assert record["memory"]["optimizer"] == "Adam8bit"
    assert 0 < sizes["optimizer_state_bytes"] <= 0.4 * 8 * sizes["trained_parameters"]
    assert record["losses"]["forget"]["value"][-1] == record["losses"]["forget"]["value"][-1]  # finite, not NaN


def test_bf16_frozen_parts_are_copies_the_callers_pipeline_and_the_saved_folder_keep_fp32(tmp_path):
    """--frozen-dtype bf16 casts copies of the VAE and text encoder for the run; the caller's pipeline shares the
    originals and must get them back bit for bit, and the saved folder must hold fp32 frozen parts."""
    from diffusers import StableDiffusionPipeline

    from tests.conftest import tiny_stable_diffusion

    parts = tiny_stable_diffusion(tmp_path)
    pipe = StableDiffusionPipeline(vae=parts.vae.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.denoiser, scheduler=parts.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    before = {name: t.clone() for name, t in pipe.vae.state_dict().items()}
    erased, record = erase.unlearn(pipe, forget="a photo of a cat", remain=["a photo of a dog"], steps=2,
                                   fisher_batches=1, batch_size=2, images_per_condition=2, generation_steps=2,
                                   frozen_dtype="bf16", out=tmp_path / "out")
    assert record["memory"]["frozen_dtype"] == "bfloat16"
    modules = (pipe.vae, pipe.text_encoder)
    held = sum(2 * t.numel() if t.is_floating_point() else t.numel() * t.element_size()  # integer buffers stay
               for m in modules for t in (*m.parameters(), *m.buffers()))
    assert record["memory"]["sizes"]["frozen_bytes"] == held  # the run held the bf16 copies
    assert erased.vae is pipe.vae and pipe.vae.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert all(torch.equal(before[name], t) for name, t in pipe.vae.state_dict().items())
    saved = StableDiffusionPipeline.from_pretrained(tmp_path / "out")
    assert saved.vae.dtype == torch.float32 and saved.text_encoder.dtype == torch.float32


def test_fisher_groups_give_the_same_mask_and_run_with_a_third_of_the_fisher_memory(tmp_path):
    """--fisher-groups 3 replays the same batches, noise and timesteps for each third of the parameters, with the
    clip norm still taken over the whole gradient: the mask, and so the whole run, must equal --fisher-groups 1 bit
    for bit, while the Fishers held at once shrink to about a third."""
    runs = {}
    for groups in (1, 3):
        erase.unlearn(erase.SHIPPED_MODEL, forget=7, data="digits", steps=2, fisher_batches=2, batch_size=4,
                      fisher_groups=groups, out=tmp_path / str(groups))
        runs[groups] = json.loads((tmp_path / str(groups) / "run.json").read_text())
    from safetensors.torch import load_file

    for name in ("mask.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        one, three = (load_file(str(tmp_path / str(groups) / name)) for groups in (1, 3))
        assert one.keys() == three.keys() and all(torch.equal(one[k], three[k]) for k in one), name
    held = [runs[groups]["memory"]["sizes"]["fisher_bytes"] for groups in (1, 3)]
    assert held[1] <= 0.45 * held[0], held


def test_a_frozen_dtype_for_a_model_without_frozen_parts_is_refused():
    """The shipped pixel-space digit model has no VAE or text encoder: --frozen-dtype bf16 would change nothing."""
    with pytest.raises(erase.OptionError, match="frozen.dtype bf16.*no frozen VAE or text encoder"):
        erase.unlearn(erase.SHIPPED_MODEL, forget=7, data="digits", steps=1, fisher_batches=1, batch_size=4,
                      frozen_dtype="bf16")
