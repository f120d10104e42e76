import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from erase.objectives import denoising_losses
from erase.eval.mia import attack_accuracy, classifier_features, denoising_loss_features, mia_efficacy
from erase.pipelines.cfg_unet import CFGUNetAdapter


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These models are tiny: a second intra-op thread gains nothing and, on a busy 2-core machine, its spinning made
    the MLP test 30x slower (0.8 s -> 27 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def noisy_digits_losses(seed: int = 0):
    """Per-sample loss of an MLP that memorised 300 digits with 30% of labels replaced at random: (its training
    set, fresh set A, fresh set B), fresh sets of 500 from the same distribution (same label noise). ~0.3 s."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data / 16, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    replaced = torch.rand(len(x), generator=generator) < 0.3
    y = torch.where(replaced, torch.randint(0, 10, (len(x),), generator=generator), torch.tensor(digits.target))
    train, fresh_a, fresh_b = order[:300], order[300:800], order[800:1300]
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):  # full batch: the training loss ends near 0.01, noisy labels included
        optimizer.zero_grad()
        F.cross_entropy(net(x[train]), y[train]).backward()
        optimizer.step()
    with torch.no_grad():
        return [F.cross_entropy(net(x[i]), y[i], reduction="none") for i in (train, fresh_a, fresh_b)]


def test_attack_tells_a_memorised_training_set_from_fresh_data_but_not_two_fresh_sets():
    train, fresh_a, fresh_b = noisy_digits_losses()
    assert train.mean() < 0.05 < fresh_a.mean()  # it did memorise
    assert attack_accuracy(train, fresh_a) > 0.65  # 300 members vs 500 non-members, balanced to 300 each
    assert attack_accuracy(fresh_a, fresh_b) == pytest.approx(0.5, abs=0.08)


def test_perfectly_separating_features_give_accuracy_one():
    rng = np.random.default_rng(0)
    assert attack_accuracy(rng.normal(3, 0.1, 100), rng.normal(-3, 0.1, 100)) == pytest.approx(1.0)
    members, non_members = rng.normal(0, 1, (80, 3)), rng.normal(0, 1, (80, 3))
    members[:, 2] += 10  # only the third feature separates
    assert attack_accuracy(torch.from_numpy(members), torch.from_numpy(non_members)) == pytest.approx(1.0)


def test_unbalanced_sets_are_balanced_before_the_attack():
    # on indistinguishable sets an unbalanced attacker scores the majority share, 300 / 360 = 0.83, by calling
    # everything a member; balanced, 0.5 up to noise. On 120 samples cross-validation of a null attacker is biased
    # below 0.5 (0.29-0.56 over seeds), hence only an upper bound there and a two-sided one on 1200.
    rng = np.random.default_rng(1)
    many, few = rng.normal(0, 1, 300), rng.normal(0, 1, 60)
    assert attack_accuracy(many, few) < 0.65 and attack_accuracy(few, many) < 0.65
    assert attack_accuracy(rng.normal(0, 1, 3000), rng.normal(0, 1, 600)) == pytest.approx(0.5, abs=0.06)
    assert attack_accuracy(many, few, seed=3) == attack_accuracy(many, few, seed=3)


def test_attack_accuracy_refuses_sets_smaller_than_the_fold_count():
    with pytest.raises(ValueError, match="9 members and 50 non-members"):
        attack_accuracy(np.zeros(9), np.ones(50))
    with pytest.raises(ValueError, match="50 members and 4 non-members"):
        attack_accuracy(np.zeros(50), np.ones(4), folds=5)
    attack_accuracy(np.zeros(5), np.ones(5), folds=5)  # exactly `folds` is enough
    with pytest.raises(ValueError, match="same number of features"):
        attack_accuracy(np.zeros((20, 2)), np.ones((20, 3)))
    with pytest.raises(ValueError, match="NaN"):
        attack_accuracy(np.r_[np.zeros(19), np.nan], np.ones(20))


def test_classifier_features_match_hand_computed_values():
    torch.manual_seed(0)
    logits = torch.randn(6, 4) * 3
    logits[5] = torch.tensor([900.0, 0.0, -5.0, 1.0])  # probabilities that underflow to 0 must not give NaN
    labels = torch.tensor([0, 3, 1, 2, 3, 0])
    features = classifier_features(logits, labels)
    assert set(features) == {"loss", "entropy", "confidence"}
    assert all(value.dtype == np.float64 and value.shape == (6,) for value in features.values())

    expected_loss = F.cross_entropy(logits.double(), labels, reduction="none").numpy()
    rows = logits.double().tolist()
    expected_entropy, expected_confidence = [], []
    for row, label in zip(rows, labels.tolist()):
        top = max(row)
        total = sum(math.exp(v - top) for v in row)
        probabilities = [math.exp(v - top) / total for v in row]
        expected_entropy.append(-sum(p * math.log(p) for p in probabilities if p > 0))
        expected_confidence.append(probabilities[label])
    np.testing.assert_allclose(features["loss"], expected_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(features["entropy"], expected_entropy, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(features["confidence"], expected_confidence, rtol=1e-9, atol=1e-12)
    assert features["entropy"][5] == pytest.approx(0.0, abs=1e-12) and features["confidence"][5] == 1.0

    same = classifier_features(logits.numpy(), labels.numpy())
    np.testing.assert_array_equal(same["loss"], features["loss"])
    with pytest.raises(ValueError, match="class ids 0-3"):
        classifier_features(logits, torch.tensor([0, 1, 2, 3, 4, 0]))


def test_mia_efficacy_calls_test_like_forget_sets_non_members_and_retain_like_ones_members():
    rng = np.random.default_rng(0)
    retain = rng.beta(30, 1, 2000)  # confident on its training data
    test = rng.beta(4, 2, 400)  # less so on unseen data
    forgotten = mia_efficacy(retain, test, rng.beta(4, 2, 300))
    remembered = mia_efficacy(retain, test, rng.beta(30, 1, 300))
    assert forgotten > 0.75 and remembered < 0.1
    # independent reading: forget samples below every retain confidence must be called non-members
    assert mia_efficacy(retain, test, np.full(50, 0.05)) == 1.0


def test_mia_efficacy_balances_retain_and_test_and_takes_confidence_from_feature_dicts():
    rng = np.random.default_rng(2)
    # indistinguishable retain and test, 1000 vs 100: an unbalanced fit calls everything a member (efficacy 0)
    value = mia_efficacy(rng.uniform(0, 1, 1000), rng.uniform(0, 1, 100), rng.uniform(0, 1, 500))
    assert 0.15 < value < 0.85

    logits = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(200, dtype=torch.long)
    features = classifier_features(logits, labels)
    from_dicts = mia_efficacy(features, classifier_features(logits * 0.1, labels), features)
    assert from_dicts == mia_efficacy(features["confidence"], classifier_features(logits * 0.1, labels)["confidence"],
                                      features["confidence"])
    with pytest.raises(ValueError, match="empty: forget"):
        mia_efficacy(np.ones(10), np.zeros(10), np.zeros(0))


def tiny_two_class_adapter(seed: int = 0) -> CFGUNetAdapter:
    torch.manual_seed(seed)
    return CFGUNetAdapter.create(resolution=8, channels=(16, 32), num_classes=2)


def test_denoising_loss_features_use_fixed_noise_independent_of_batching():
    adapter = tiny_two_class_adapter()
    adapter.denoiser.train()
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    labels = torch.tensor([0, 1, 1, 0, 1])
    timesteps = (10, 500, 990)
    small = denoising_loss_features(adapter, images, labels, timesteps, seed=7, batch_size=3)
    whole = denoising_loss_features(adapter, images, labels, timesteps, seed=7, batch_size=256)
    assert small.shape == (5, 3) and small.dtype == torch.float32
    torch.testing.assert_close(small, whole, rtol=1e-5, atol=1e-6)
    assert adapter.denoiser.training, "the denoiser's mode is restored"
    assert not torch.allclose(denoising_loss_features(adapter, images, labels, timesteps, seed=8), whole)

    # independent: image 3 at timestep index 1 with the (N, T, C, H, W) draw from torch.Generator(seed) by hand
    noise = torch.randn(5, 3, 1, 8, 8, generator=torch.Generator().manual_seed(7))[3, 1]
    alpha_bar = adapter.noise_schedule.alphas_cumprod[500]
    x_t = alpha_bar.sqrt() * images[3] + (1 - alpha_bar).sqrt() * noise
    adapter.denoiser.eval()
    with torch.no_grad():
        eps = adapter.denoiser(x_t[None], torch.tensor([500]), class_labels=torch.tensor([0])).sample[0]
    assert whole[3, 1].item() == pytest.approx((eps - noise).pow(2).mean().item(), rel=1e-4)


def test_denoising_loss_features_refuse_bad_inputs():
    adapter = tiny_two_class_adapter()
    images = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="outside 0-999"):
        denoising_loss_features(adapter, images, torch.zeros(4, dtype=torch.long), timesteps=(100, 1000))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        denoising_loss_features(adapter, images, torch.zeros(3, dtype=torch.long))
    adapter.generative = False  # as a classifier adapter (erase/pipelines/classifier.py) declares
    with pytest.raises(ValueError, match="classifier_features"):
        denoising_loss_features(adapter, images, torch.zeros(4, dtype=torch.long))


def test_a_diffusion_model_has_lower_denoising_loss_on_the_images_it_memorised():
    """200 full-batch Adam steps on 16 digit images (classes 0 and 1), ~4.5 s on one thread: the mean feature on those
    16 is lower than on 16 fresh ones (0.07-0.09 vs 0.10-0.14 over 6 seeds when this was written)."""
    from erase.data import digits

    data = digits(8)
    keep = (data.labels < 2).nonzero().squeeze(1)
    images, labels = data.images[keep], data.labels[keep]
    adapter = tiny_two_class_adapter(seed=0)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, fresh = order[:16], order[16:32]
    optimizer = torch.optim.Adam(adapter.denoiser.parameters(), 2e-3)
    for _ in range(200):
        optimizer.zero_grad()
        denoising_losses(adapter, images[train], labels[train]).mean().backward()
        optimizer.step()
    members = denoising_loss_features(adapter, images[train], labels[train])
    non_members = denoising_loss_features(adapter, images[fresh], labels[fresh])
    assert members.shape == (16, 5)
    assert members.mean() < 0.9 * non_members.mean()
