"""Stable Diffusion 1.x (epsilon) and 2.x (v_prediction), and the training target of every prediction type checked
against the textbook formula computed here."""

import math

import pytest
import torch

from erase.objectives import denoising_losses
from erase.pipelines.targets import FlowMatching, NoisePrediction, training_target
from tests.conftest import tiny_stable_diffusion
from tests.family_checks import check_family

SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def sd_pipeline(tmp_path, prediction_type: str):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    parts = tiny_stable_diffusion(tmp_path)
    scheduler = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    return StableDiffusionPipeline(vae=parts.vae.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.denoiser, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_stable_diffusion_family_erases_a_prompt_and_writes_a_plain_diffusers_folder(tmp_path, prediction_type):
    record = check_family(sd_pipeline(tmp_path, prediction_type), tmp_path, "unet", prediction_type)
    assert record["backbone"] == "stable_diffusion"


def alpha_bar(t: int) -> float:
    """SD's scaled_linear schedule, computed here: betas linear in sqrt space, abar the running product."""
    start, end, count = math.sqrt(0.00085), math.sqrt(0.012), 1000
    product = 1.0
    for i in range(t + 1):
        product *= 1.0 - (start + (end - start) * i / (count - 1)) ** 2
    return product


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_trains_toward_the_textbook_target(prediction_type):
    torch.manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    t = torch.tensor([0, 421, 999])
    target = NoisePrediction({**SD_SCHEDULE, "prediction_type": prediction_type})
    a = torch.tensor([alpha_bar(int(k)) for k in t], dtype=torch.float64).reshape(-1, 1, 1, 1)
    x0d, noised = x0.double(), noise.double()
    expected_x_t = a.sqrt() * x0d + (1 - a).sqrt() * noised
    expected = {"epsilon": noised, "v_prediction": a.sqrt() * noised - (1 - a).sqrt() * x0d, "sample": x0d}[prediction_type]
    assert torch.allclose(target.add_noise(x0, noise, t).double(), expected_x_t, atol=1e-5)
    assert torch.allclose(target.target(x0, noise, t).double(), expected, atol=1e-5)


def test_flow_matching_trains_toward_the_velocity_at_the_interpolated_point():
    torch.manual_seed(0)
    target = FlowMatching({"num_train_timesteps": 1000, "shift": 3.0, "_class_name": "FlowMatchEulerDiscreteScheduler"})
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([250.0, 900.0])
    sigma = torch.tensor([0.25, 0.9]).reshape(-1, 1, 1, 1)
    assert torch.allclose(target.add_noise(x0, noise, t), (1 - sigma) * x0 + sigma * noise, atol=1e-6)
    assert torch.equal(target.target(x0, noise, t), noise - x0)
    # drawn sigmas lie on the shifted training grid: sigma = s u / (1 + (s - 1) u) for some u = k / 1000
    drawn = target.draw_timesteps(64, "cpu", generator=torch.Generator().manual_seed(1)) / 1000
    u = drawn / (3.0 - 2.0 * drawn)  # the shift inverted
    assert torch.allclose(u * 1000, (u * 1000).round(), atol=1e-2) and bool(((drawn > 0) & (drawn <= 1)).all())


def test_the_per_sample_loss_is_the_hand_computed_squared_error_under_each_reduction(tmp_path):
    adapter = tiny_stable_diffusion(tmp_path)
    adapter.parameterization = training_target({**SD_SCHEDULE, "prediction_type": "v_prediction"})
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 700])
    ids = adapter.register_prompts(["a cat", "a dog"])
    a = torch.tensor([alpha_bar(10), alpha_bar(700)]).reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.no_grad():
        output = adapter.denoiser(x_t, t, encoder_hidden_states=adapter.embeddings["encoder_hidden_states"][ids]).sample
        squared = (output - (a.sqrt() * noise - (1 - a).sqrt() * x0)).pow(2).flatten(1)
        for reduction, expected in (("mean", squared.mean(1)), ("sum", squared.sum(1))):
            losses = denoising_losses(adapter, x0, ids, timesteps=t, noise=noise, reduction=reduction)
            assert torch.allclose(losses, expected, rtol=1e-4), reduction


def test_an_unknown_prediction_type_is_refused_naming_the_scheduler_file():
    from erase.errors import ModelError

    with pytest.raises(ModelError, match="prediction_type 'x_star' is unknown.*scheduler_config.json"):
        training_target({**SD_SCHEDULE, "prediction_type": "x_star"})


METHOD_OPTIONS = {"sfron": dict(fisher_batches=1), "joint": dict(fisher_batches=1), "nabla_tau": {},
                  "ga": {}, "rl": {}, "salun": dict(saliency_batches=1), "esd": dict(ddim_steps=2),
                  "sa": dict(replay_per_condition=1, replay_steps=2, fisher_batches=1)}


@pytest.mark.parametrize("family", ["v_prediction", "flow_matching"])
@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_every_method_runs_on_v_prediction_and_flow_models_and_moves_the_weights(tmp_path, method, family):
    """Each method goes through the adapter's target unchanged: one step on a v-prediction SD and on an SD 3 model."""
    import erase
    from erase.methods import METHODS
    from tests.family_checks import same, state

    assert set(METHOD_OPTIONS) == set(METHODS)  # a new method gets a row here
    if family == "v_prediction":
        pipeline, trained = sd_pipeline(tmp_path, "v_prediction"), "unet"
    else:
        from tests.test_family_sd3 import sd3_pipeline

        pipeline, trained = sd3_pipeline(tmp_path, with_t5=False), "transformer"
    before = state(getattr(pipeline, trained))
    erased, record = erase.unlearn(pipeline, forget="a photo of a cat", remain=["a photo of a dog"], method=method,
                                   steps=1, batch_size=1, images_per_condition=1, generation_steps=2,
                                   **METHOD_OPTIONS[method])
    assert record["training_target"]["prediction_type"] == family
    assert not same(state(getattr(erased, trained)), before)
