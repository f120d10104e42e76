import pytest
import torch

from erase.data import split_by_class
from erase.engine import MaskedUpdate, Runtime, Stepper, make_accelerator
from erase.errors import NonFiniteLossError
from erase.objectives import denoising_losses
from erase.saliency import trainable_parameters
from erase.methods.sfron import SFRonConfig, sfron
from erase.eval.losses import fixed_draw_loss
from erase.pipelines import load_adapter
from tests.conftest import tiny_adapter


def steppers(adapter):
    accelerator = make_accelerator(Runtime(seed=0))
    optimizer = torch.optim.Adam(adapter.denoiser.parameters(), lr=1e-2)
    return Stepper(accelerator, adapter.denoiser, optimizer, max_grad_norm=1.0)


def batch_loss(adapter, images, labels):
    return lambda: (lambda l: (l, l))(denoising_losses(adapter, images, labels).mean())


def test_forget_step_leaves_masked_entries_bit_identical_and_remain_step_moves_them(digit_data):
    adapter = tiny_adapter()
    params = trainable_parameters(adapter.denoiser)
    torch.manual_seed(0)
    mask = {name: torch.rand_like(p) < 0.5 for name, p in params.items()}
    stepper = steppers(adapter)
    images, labels = digit_data.images[:32], digit_data.labels[:32]
    stepper.step(batch_loss(adapter, images, labels))  # an unmasked step first: Adam now has momentum everywhere

    before = {name: p.detach().clone() for name, p in params.items()}
    stepper.step(lambda: (lambda l: (-l, l))(denoising_losses(adapter, images, labels).mean()), MaskedUpdate(params, mask))
    for name, p in params.items():
        assert torch.equal(p[~mask[name]], before[name][~mask[name]]), f"masked entries of {name} moved"
    moved = sum(int((p != before[name])[mask[name]].sum()) for name, p in params.items())
    assert moved > 0.5 * sum(int(m.sum()) for m in mask.values()), "the salient entries should move"

    before = {name: p.detach().clone() for name, p in params.items()}
    stepper.step(batch_loss(adapter, images, labels))
    moved_masked = sum(int((p != before[name])[~mask[name]].sum()) for name, p in params.items())
    assert moved_masked > 0.5 * sum(int((~m).sum()) for m in mask.values()), "the remain step is never masked"


def test_gradient_accumulation_over_halves_equals_one_full_batch(digit_data):
    images, labels = digit_data.images[:16], digit_data.labels[:16]
    noise, timesteps = torch.randn_like(images), torch.randint(0, 1000, (16,))
    results = []
    for accum in (1, 2):
        adapter = tiny_adapter()
        optimizer = torch.optim.SGD(adapter.denoiser.parameters(), lr=1.0)
        stepper = Stepper(make_accelerator(Runtime()), adapter.denoiser, optimizer, None, grad_accum=accum)
        parts = iter(torch.arange(16).chunk(accum))

        def loss_fn():
            part = next(parts)
            loss = denoising_losses(adapter, images[part], labels[part], timesteps[part], noise[part]).mean()
            return loss, loss

        stepper.step(loss_fn)
        results.append(torch.cat([p.detach().flatten() for p in adapter.denoiser.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-5)


def test_gradient_masking_alone_would_leak_through_adam_momentum(digit_data):
    """Why MaskedUpdate restores entries: masking only the gradient lets Adam's momentum move them."""
    adapter = tiny_adapter()
    params = trainable_parameters(adapter.denoiser)
    stepper = steppers(adapter)
    images, labels = digit_data.images[:32], digit_data.labels[:32]
    stepper.step(batch_loss(adapter, images, labels))
    before = {name: p.detach().clone() for name, p in params.items()}
    stepper.optimizer.zero_grad(set_to_none=False)  # zero gradient = mask 0 everywhere, no restore
    stepper.optimizer.step()
    assert any(not torch.equal(p, before[name]) for name, p in params.items())


def test_forget_loss_rises_while_remain_loss_holds_over_20_steps(trained_model_dir, digit_data):
    adapter = load_adapter(trained_model_dir)
    forget, remain = split_by_class(digit_data, [7])
    forget_before, remain_before = fixed_draw_loss(adapter, forget), fixed_draw_loss(adapter, remain)
    # the pixel-mean convention forgets fastest at toy size (20 steps); the sum convention needs more steps
    config = SFRonConfig(steps=20, batch_size=32, fisher_batches=4, loss_reduction="mean")
    result = sfron(adapter, forget, remain, config, Runtime(seed=0))
    forget_after, remain_after = fixed_draw_loss(adapter, forget), fixed_draw_loss(adapter, remain)
    assert forget_after > 1.3 * forget_before, (forget_before, forget_after)
    assert abs(remain_after - remain_before) <= 0.10 * remain_before, (remain_before, remain_after)
    assert len(result["losses"]["forget"]["value"]) == 20 and len(result["losses"]["remain"]["value"]) == 20
    assert 0.0 < result["mask_sparsity"]["overall"] < 1.0
    assert set(result["timings"]) == {"fisher", "mask", "unlearn"}


def test_forget_every_k_takes_forget_steps_on_every_kth_iteration(digit_data):
    forget, remain = split_by_class(digit_data, [7])
    config = SFRonConfig(steps=6, batch_size=8, fisher_batches=1, forget_every=3)
    result = sfron(tiny_adapter(), forget, remain, config, Runtime(seed=0))
    assert result["losses"]["forget"]["step"] == [0, 3]
    assert result["losses"]["remain"]["step"] == list(range(6))


def test_forget_dense_takes_a_forget_step_on_each_of_the_first_n_iterations_then_every_kth(digit_data):
    forget, remain = split_by_class(digit_data, [7])
    config = SFRonConfig(steps=8, batch_size=8, fisher_batches=1, forget_every=3, forget_dense=2)
    result = sfron(tiny_adapter(), forget, remain, config, Runtime(seed=0))
    assert result["losses"]["forget"]["step"] == [0, 1, 3, 6]
    assert result["losses"]["remain"]["step"] == list(range(8))


def test_non_finite_loss_stops_and_names_the_step(digit_data):
    forget, remain = split_by_class(digit_data, [7])
    config = SFRonConfig(steps=30, batch_size=8, fisher_batches=1, lr=1e30, max_grad_norm=None)
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step \d+"):
        sfron(tiny_adapter(), forget, remain, config, Runtime(seed=0, log_every=5))


def test_a_mask_that_does_not_fit_the_model_is_refused(digit_data):
    forget, remain = split_by_class(digit_data, [7])
    with pytest.raises(ValueError, match="no entry"):
        sfron(tiny_adapter(), forget, remain, SFRonConfig(steps=1, batch_size=8), Runtime(), mask={"x": torch.ones(1)})


def test_same_seed_same_result_different_seed_different_result(digit_data):
    forget, remain = split_by_class(digit_data, [7])
    config = SFRonConfig(steps=3, batch_size=16, fisher_batches=2)
    weights = []
    for seed in (0, 0, 1):
        adapter = tiny_adapter()
        sfron(adapter, forget, remain, config, Runtime(seed=seed))
        weights.append(torch.cat([p.detach().flatten() for p in adapter.denoiser.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


@pytest.mark.parametrize("objective, extra", [("ga", {}), ("pseudo", {}), ("pseudo", {"pseudo_class": 3})])
def test_other_forget_objectives_run_and_log_finite_losses(digit_data, objective, extra):
    forget, remain = split_by_class(digit_data, [7])
    config = SFRonConfig(steps=2, batch_size=8, fisher_batches=1, forget_objective=objective, **extra)
    result = sfron(tiny_adapter(), forget, remain, config, Runtime(seed=0))
    assert all(torch.isfinite(torch.tensor(result["losses"]["forget"]["value"])))
