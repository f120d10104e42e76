import pytest
import torch

from erase.objectives import denoising_losses
from erase.saliency import fisher_diagonal, load_mask, mask_sparsity, saliency_mask, save_mask
from tests.conftest import tiny_adapter


def test_mask_formula_on_hand_made_fisher():
    forget = {"a.weight": torch.tensor([2.0, 1.0, 0.0, 0.5]), "b.bias": torch.tensor([0.0])}
    remain = {"a.weight": torch.tensor([1.0, 1.0, 0.0, 1.0]), "b.bias": torch.tensor([3.0])}
    mask = saliency_mask(forget, remain, gamma=1.0)
    # ratios: 2, 1 (equal counts as salient), (0+eps)/(0+eps) = 1, 0.5; and ~0
    assert mask["a.weight"].tolist() == [True, True, True, False]
    assert mask["b.bias"].tolist() == [False]
    assert mask["a.weight"].dtype == torch.bool
    assert saliency_mask(forget, remain, gamma=1.5)["a.weight"].tolist() == [True, False, False, False]
    assert saliency_mask(forget, remain, gamma=0.5)["a.weight"].tolist() == [True, True, True, True]


def test_sparsity_counts_mask_zeros_overall_and_per_module():
    mask = {"a.weight": torch.tensor([True, False, False, False]), "a.bias": torch.tensor([True]),
            "b.weight": torch.tensor([True, True, False])}
    sparsity = mask_sparsity(mask)
    assert sparsity["overall"] == pytest.approx(4 / 8)
    assert sparsity["per_module"] == {"a": pytest.approx(3 / 5), "b": pytest.approx(1 / 3)}
    assert sparsity["salient_entries"] == 4 and sparsity["total_entries"] == 8


def test_mask_round_trips_through_safetensors_as_bool(tmp_path):
    mask = {"down.0.weight": torch.rand(3, 4) > 0.5, "up.bias": torch.tensor([True, False])}
    save_mask(mask, tmp_path / "mask.safetensors", {"gamma": "1.0"})
    loaded = load_mask(tmp_path / "mask.safetensors")
    assert loaded.keys() == mask.keys()
    assert all(loaded[k].dtype == torch.bool and torch.equal(loaded[k], mask[k]) for k in mask)


def test_fisher_is_the_mean_squared_gradient_over_batches():
    adapter = tiny_adapter()
    images = torch.randn(2, 4, 1, 8, 8)
    labels = torch.tensor([[3, 3, 3, 3], [5, 5, 5, 5]])
    params = dict(adapter.denoiser.named_parameters())

    def batches():
        for i in range(2):
            yield images[i], labels[i]

    torch.manual_seed(1)
    fisher = fisher_diagonal(adapter, batches(), num_batches=2)
    torch.manual_seed(1)  # same noise and timesteps as inside fisher_diagonal
    expected = {name: torch.zeros_like(p) for name, p in params.items()}
    for x0, y in batches():
        grads = torch.autograd.grad(denoising_losses(adapter, x0, y).mean(), list(params.values()), allow_unused=True)
        for (name, p), g in zip(params.items(), grads):
            expected[name] += 0.0 if g is None else g.pow(2) / 2
    for name in params:
        assert torch.allclose(fisher[name], expected[name], rtol=1e-4, atol=1e-12), name
    assert fisher["class_embedding.weight"][3].abs().sum() > 0
    assert fisher["class_embedding.weight"][7].abs().sum() == 0, "a class absent from the batches gets no Fisher mass"


def test_fisher_clipping_bounds_each_batch_gradient():
    adapter = tiny_adapter()
    batch = (torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4]))
    fisher = fisher_diagonal(adapter, iter([batch]), num_batches=1, max_grad_norm=1e-3)
    assert sum(f.sum() for f in fisher.values()).item() == pytest.approx(1e-6, rel=1e-3)  # ||g||^2 after clipping
