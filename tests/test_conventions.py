"""The loss conventions the methods' published constants were tuned under (docs/algorithms.md, section 1).

The reference gradients here are computed from the raw diffusers UNet and the scheduler's alphas_cumprod, not
through `erase.objectives`: only the batch (images, noise, timesteps, conditions) is taken from the method's run.
"""

import pytest
import torch

from erase.data import split_by_class
from erase.engine import Runtime
from erase.methods.rl import RLConfig, rl
from erase.saliency import trainable_parameters
from erase.methods.sfron import SFRonConfig, sfron
from tests.conftest import tiny_adapter

B = 8


class Spy:
    """Records every add_noise/model_output call of an adapter and the gradients each optimizer step applies."""

    def __init__(self, adapter, monkeypatch):
        self.noised, self.predicted, self.steps = [], [], []
        add_noise, model_output = adapter.add_noise, adapter.model_output

        def spy_add_noise(x0, noise, timesteps):
            self.noised.append((x0.detach().clone(), noise.detach().clone(), timesteps.clone()))
            return add_noise(x0, noise, timesteps)

        def spy_predict(x_t, timesteps, condition):
            self.predicted.append(condition.clone())
            return model_output(x_t, timesteps, condition)

        monkeypatch.setattr(adapter, "add_noise", spy_add_noise)
        monkeypatch.setattr(adapter, "model_output", spy_predict)
        original_step = torch.optim.Adam.step

        def spy_step(optimizer, *args, **kwargs):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self.steps.append(([p.detach().clone() for p in params], [p.grad.detach().clone() for p in params]))
            return original_step(optimizer, *args, **kwargs)

        monkeypatch.setattr(torch.optim.Adam, "step", spy_step)


def reference_losses(unet, scheduler, weights, x0, noise, t, labels, reduction):
    """Per-sample ||eps - unet(x_t)||^2 at the given weights, reduced over pixels: written out by hand."""
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    names = list(trainable_parameters(unet))
    output = torch.func.functional_call(unet, dict(zip(names, weights)), (x_t, t), {"class_labels": labels}).sample
    squared = (output - noise).pow(2).flatten(1)
    return squared.sum(1) if reduction == "sum" else squared.mean(1)


def clipped(grads, max_norm=1.0):
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    return [g * min(1.0, max_norm / (float(norm) + 1e-6)) for g in grads]


def exact_batches(digit_data):
    """B forget and B remain images, so every batch holds the whole set (order aside)."""
    forget, remain = split_by_class(digit_data, [7])
    keep = torch.arange(B)
    return forget.subset(keep, "forget"), remain.subset(keep, "remain")


@pytest.mark.parametrize("reduction, placement", [("sum", "loss"), ("mean", "loss"), ("sum", "clipped")])
def test_sfron_forget_and_remain_gradients_match_the_official_form_after_clipping(digit_data, monkeypatch, reduction,
                                                                                  placement):
    forget, remain = exact_batches(digit_data)
    adapter = tiny_adapter()
    spy = Spy(adapter, monkeypatch)
    params = trainable_parameters(adapter.denoiser)
    torch.manual_seed(1)
    mask = {name: torch.rand_like(p) < 0.5 for name, p in params.items()}
    config = SFRonConfig(steps=1, batch_size=B, loss_reduction=reduction, remain_label_dropout=0.0,
                         alpha_placement=placement)
    result = sfron(adapter, forget, remain, config, Runtime(seed=0), mask=mask)
    assert result["conventions"]["forget_reduction"] == result["conventions"]["remain_reduction"] == reduction

    unet, scheduler = adapter.denoiser, adapter.noise_schedule
    (forget_weights, forget_grads), (remain_weights, remain_grads) = spy.steps
    # forget step: -forget_alpha * mean(w_i l_i), w_i ~ 1 / l_i^0.5 normalised to sum to B, masked, clipped to 1;
    # with placement "clipped" forget_alpha multiplies the clipped gradient instead (a step of norm 10, not 1)
    x0, noise, t = spy.noised[0]
    weights = [w.clone().requires_grad_(True) for w in forget_weights]
    losses = reference_losses(unet, scheduler, weights, x0, noise, t, spy.predicted[0], reduction)
    inverse = 1 / (losses.detach().pow(0.5) + 1e-8)
    objective = -(inverse / inverse.sum() * B * losses).mean()
    grads = torch.autograd.grad(objective, weights)
    if placement == "loss":
        expected = clipped([10.0 * g * m for g, m in zip(grads, mask.values())])
    else:
        expected = [10.0 * g for g in clipped([g * m for g, m in zip(grads, mask.values())])]
    for name, got, want in zip(params, forget_grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=f"forget gradient of {name}")
    # remain step: plain mean over the batch of the per-sample loss, unmasked, clipped to 1
    x0, noise, t = spy.noised[1]
    weights = [w.clone().requires_grad_(True) for w in remain_weights]
    losses = reference_losses(unet, scheduler, weights, x0, noise, t, spy.predicted[1], reduction)
    expected = clipped(torch.autograd.grad(losses.mean(), weights))
    for name, got, want in zip(params, remain_grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=f"remain gradient of {name}")


@pytest.mark.parametrize("reduction, weight", [(None, 3.072), ("sum", 1e-3)])
def test_rl_forget_term_is_a_pixel_mean_and_remain_term_carries_salun_weight(digit_data, monkeypatch, reduction, weight):
    """Defaults: pixel-mean remain term at 3.072 (SalUn's 1e-3 x 3x32x32); SalUn's literal pixel sum at 1e-3."""
    forget, remain = exact_batches(digit_data)
    adapter = tiny_adapter()
    spy = Spy(adapter, monkeypatch)
    params = trainable_parameters(adapter.denoiser)
    literal = {} if reduction is None else {"remain_reduction": reduction, "remain_alpha": weight}
    rl(adapter, forget, remain, RLConfig(steps=1, batch_size=B, remain_label_dropout=0.0, max_grad_norm=None, **literal),
       Runtime(seed=0))
    (weights_before, grads), = spy.steps
    unet, scheduler = adapter.denoiser, adapter.noise_schedule
    weights = [w.clone().requires_grad_(True) for w in weights_before]
    names = list(params)
    # forget term: MSE (pixel mean) between eps(x_t, 7) and the detached eps(x_t, 8), 8 = (7 + 1) mod 10
    x0, noise, t = spy.noised[0]
    assert torch.equal(spy.predicted[0], torch.full((B,), 8)) and torch.equal(spy.predicted[1], torch.full((B,), 7))
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    call = lambda labels: torch.func.functional_call(unet, dict(zip(names, weights)), (x_t, t),  # noqa: E731
                                                     {"class_labels": labels}).sample
    forget_term = (call(spy.predicted[1]) - call(spy.predicted[0]).detach()).pow(2).mean()
    x0, noise, t = spy.noised[1]
    remain_term = reference_losses(unet, scheduler, weights, x0, noise, t, spy.predicted[2], reduction or "mean").mean()
    expected = torch.autograd.grad(forget_term + weight * remain_term, weights)
    for name, got, want in zip(names, grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=f"RL gradient of {name}")


def test_remain_labels_drop_to_null_at_the_recorded_rate_and_forget_labels_never(digit_data, monkeypatch):
    forget, remain = split_by_class(digit_data, [7])
    adapter = tiny_adapter()
    adapter.info["label_dropout"] = 0.25  # as `erase train` records it
    spy = Spy(adapter, monkeypatch)
    config = SFRonConfig(steps=40, batch_size=32, fisher_batches=1)
    result = sfron(adapter, forget, remain, config, Runtime(seed=0))
    assert result["conventions"]["remain_label_dropout"] == 0.25
    calls = spy.predicted[-80:]  # after the Fisher batches: (forget, remain) per iteration
    forget_conditions, remain_conditions = torch.cat(calls[0::2]), torch.cat(calls[1::2])
    assert not (forget_conditions == 10).any()
    share = float((remain_conditions == 10).float().mean())
    assert 0.18 < share < 0.32, share  # 1280 draws at p = 0.25: 3.9 standard deviations either side

    adapter = tiny_adapter()
    adapter.info["label_dropout"] = 0.25
    spy = Spy(adapter, monkeypatch)
    result = sfron(adapter, forget, remain, SFRonConfig(steps=5, batch_size=32, fisher_batches=1,
                                                        remain_label_dropout=0.0), Runtime(seed=0))
    assert result["conventions"]["remain_label_dropout"] == 0.0
    assert not any((c == 10).any() for c in spy.predicted[-10:])


def test_a_model_without_a_recorded_rate_gets_no_dropout_and_run_json_says_so(digit_data):
    forget, remain = split_by_class(digit_data, [7])
    adapter = tiny_adapter()
    adapter.info.pop("label_dropout", None)
    result = sfron(adapter, forget, remain, SFRonConfig(steps=1, batch_size=8, fisher_batches=1), Runtime(seed=0))
    assert result["conventions"]["remain_label_dropout"] == 0.0
    assert result["conventions"]["base_label_dropout"] is None
