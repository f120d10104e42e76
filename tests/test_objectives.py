import math

import pytest
import torch

from erase.objectives import adaptive_ascent_loss, adaptive_weights, gradient_ascent_loss
from erase.pipelines.targets import NoisePrediction
from erase.methods.sfron import alpha_schedule


def test_adaptive_weights_match_the_formula_and_sum_to_batch_size():
    losses = torch.tensor([0.04, 0.25, 1.0, 4.0])
    weights = adaptive_weights(losses, temperature=0.5)
    inverse = torch.tensor([1 / 0.2, 1 / 0.5, 1 / 1.0, 1 / 2.0])  # 1 / l^0.5
    assert torch.allclose(weights, inverse / inverse.sum() * 4, rtol=1e-5)
    assert weights.sum().item() == pytest.approx(4.0, rel=1e-6)
    assert torch.all(weights[:-1] > weights[1:]), "a lower loss must get a larger weight"


def test_temperature_zero_is_plain_gradient_ascent():
    losses = torch.tensor([0.1, 0.7, 3.0], requires_grad=True)
    assert torch.allclose(adaptive_weights(losses, 0.0), torch.ones(3))
    assert adaptive_ascent_loss(losses, 0.0).item() == pytest.approx(gradient_ascent_loss(losses).item())


def test_adaptive_weights_carry_no_gradient():
    losses = torch.tensor([0.5, 2.0], requires_grad=True)
    adaptive_ascent_loss(losses, 1.0).backward()
    weights = adaptive_weights(losses, 1.0)
    assert torch.allclose(losses.grad, -weights / 2)  # d/dl of -mean(w * l) with w held fixed


def test_antithetic_timesteps_pair_t_with_its_mirror():
    torch.manual_seed(0)
    schedule = NoisePrediction({"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02})
    t = schedule.draw_timesteps(8, "cpu", antithetic=True)
    assert torch.equal(t[4:], 999 - t[:4])
    assert schedule.draw_timesteps(7, "cpu", antithetic=True).shape == (7,)


def test_alpha_schedules():
    assert alpha_schedule(10.0, 0, 100, "cosine") == pytest.approx(10.0)
    assert alpha_schedule(10.0, 50, 100, "cosine") == pytest.approx(5.0)
    assert alpha_schedule(10.0, 25, 100, "cosine") == pytest.approx(10 * (1 + math.cos(math.pi / 4)) / 2)
    assert alpha_schedule(10.0, 25, 100, "linear") == pytest.approx(7.5)
    assert alpha_schedule(10.0, 99, 100, "none") == 10.0


def test_pseudo_target_loss_is_zero_for_the_same_condition_and_pulls_toward_the_pseudo_class():
    from erase.objectives import pseudo_target_losses
    from tests.conftest import tiny_adapter

    adapter = tiny_adapter()
    x0 = torch.randn(4, 1, 8, 8)
    same = torch.tensor([7, 7, 7, 7])
    assert torch.equal(pseudo_target_losses(adapter, x0, same, same), torch.zeros(4))
    losses = pseudo_target_losses(adapter, x0, same, torch.tensor([1, 1, 1, 1]))
    assert torch.all(losses > 0)
    losses.mean().backward()
    embedding_grad = adapter.denoiser.class_embedding.weight.grad
    assert embedding_grad[7].abs().sum() > 0 and embedding_grad[1].abs().sum() == 0, "the pseudo target is detached"


def test_default_pseudo_class_is_the_next_remaining_class_wrapping_around_as_salun_maps_k_to_k_plus_1():
    from erase.objectives import default_pseudo_class, pseudo_labels

    assert default_pseudo_class([7], [0, 1, 2, 3, 4, 5, 6, 8, 9]) == 8
    assert default_pseudo_class([9], list(range(9))) == 0
    assert default_pseudo_class([3, 4], [0, 1, 2, 5, 6, 7, 8, 9]) == 5  # skips a class that is also forgotten
    labels = torch.full((64,), 7)
    assert torch.equal(pseudo_labels(labels, 8, torch.tensor([0, 8, 9])), torch.full((64,), 8))
    torch.manual_seed(0)
    random = pseudo_labels(labels, 8, torch.tensor([0, 8, 9]), per_sample_random=True)
    assert set(random.tolist()) == {0, 8, 9}
