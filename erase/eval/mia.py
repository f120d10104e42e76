"""Membership-inference attacks (MIA) that judge unlearning: does a model still treat the forget set as training data?

An attack here sees only per-sample features computed from one model (a classifier's loss or confidence, a diffusion
model's denoising loss at fixed noise) and fits a scikit-learn model to them, so the same attack scores any backbone.
Two readings:
- `attack_accuracy` (Nabla-tau, Trippa et al. 2024): how well members and non-members can be told apart; 0.5 is
  ideal for a forget set against held-out data after unlearning.
- `mia_efficacy` (SalUn, Fan et al. 2024; SFR-on): the share of the forget set that an attacker fitted on retain vs
  test calls non-member; higher means more forgotten.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from erase.objectives import denoising_losses


def as_features(values, name: str) -> np.ndarray:
    """Per-sample features as a float64 (N, k) array: (N,) becomes (N, 1); refuses other ranks and NaN/inf."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    features = np.asarray(values, dtype=np.float64)
    if features.ndim == 1:
        features = features[:, None]
    if features.ndim != 2:
        raise ValueError(f"{name} must hold one feature or one feature vector per sample, shape (N,) or (N, k); "
                         f"got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return features


def check_widths(**sets: np.ndarray) -> None:
    widths = {name: features.shape[1] for name, features in sets.items()}
    if len(set(widths.values())) > 1:
        raise ValueError(f"every set needs the same number of features per sample; got {widths}")


def balance(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Subsample the larger set, without replacement, to the size of the smaller; the smaller is kept whole."""
    size = min(len(first), len(second))

    def subsample(features):
        return features if len(features) == size else features[np.sort(rng.choice(len(features), size, replace=False))]

    return subsample(first), subsample(second)


def attack_accuracy(members, non_members, folds: int = 10, seed: int = 0) -> float:
    """Nabla-tau MIA (Trippa et al. 2024): held-out accuracy of a logistic regression telling members from
    non-members.

    `members`, `non_members`: per-sample features, (N,) or (N, k), numpy or torch. The larger set is subsampled at
    random (seeded) to the size of the smaller; members are labelled 1, non-members 0; a StandardScaler +
    LogisticRegression pipeline is scored by `folds`-fold stratified, shuffled cross-validation and the mean held-out
    accuracy returned. 0.5: the attacker cannot tell them apart (the goal after unlearning); 1.0: it always can.
    Raises ValueError when either set has fewer than `folds` samples.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    members, non_members = as_features(members, "members"), as_features(non_members, "non_members")
    check_widths(members=members, non_members=non_members)
    if min(len(members), len(non_members)) < folds:
        raise ValueError(f"attack_accuracy needs at least folds={folds} samples in each set; got {len(members)} "
                         f"members and {len(non_members)} non-members")
    members, non_members = balance(members, non_members, np.random.default_rng(seed))
    features = np.concatenate([members, non_members])
    is_member = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    attacker = make_pipeline(StandardScaler(), LogisticRegression())
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(attacker, features, is_member, cv=splits, scoring="accuracy").mean())


def classifier_features(logits, labels) -> dict[str, np.ndarray]:
    """Per-sample MIA features of a classifier, float64, each (N,): "loss" (cross-entropy of the true label),
    "entropy" (of the softmax, nats) and "confidence" (softmax probability of the true label).

    `logits`: (N, C); `labels`: (N,) class ids; torch or numpy.
    """
    logits = torch.as_tensor(logits).detach().cpu().double()
    labels = torch.as_tensor(labels).detach().cpu().long()
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (N, C) and labels (N,); got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if labels.numel() and not (0 <= labels.min() and labels.max() < logits.shape[1]):
        raise ValueError(f"labels must be class ids 0-{logits.shape[1] - 1}; got values from {labels.min().item()} "
                         f"to {labels.max().item()}")
    log_probs = logits.log_softmax(1)
    probs = log_probs.exp()
    true_log_prob = log_probs.gather(1, labels[:, None]).squeeze(1)
    # p log p -> 0 as p -> 0; a probability that underflows to 0 would otherwise give 0 * -inf = NaN
    entropy = -torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(1)
    return {"loss": (-true_log_prob).numpy(), "entropy": entropy.numpy(), "confidence": true_log_prob.exp().numpy()}


def mia_efficacy(retain, test, forget, seed: int = 0) -> float:
    """SalUn's MIA-efficacy (Fan et al. 2024, as SFR-on reports it): the share of forget samples that an attacker
    fitted on retain (member) vs test (non-member) features predicts as non-member; higher = more forgotten.

    Mirrors `SVC_fit_predict` as called by `SVC_MIA(shadow_train=retain, shadow_test=test, target_train=None,
    target_test=forget)` in OPTML-Group/Unlearn-Saliency, Classification/evaluation/SVC_MIA.py and main_forget.py:
    an RBF SVC (C=3, gamma="auto") on unscaled features, result 1 - mean(prediction on forget). The paper's number is
    the per-sample confidence feature (`classifier_features(...)["confidence"]`); each argument is (N,) or (N, k)
    features, or a `classifier_features` dict, from which "confidence" is taken. Deliberate difference: the official
    code takes the first len(test) retain samples; here the larger of retain and test is subsampled at random
    (seeded) to the size of the smaller.
    """
    retain, test, forget = (as_features(values["confidence"] if isinstance(values, Mapping) else values, name)
                            for values, name in ((retain, "retain"), (test, "test"), (forget, "forget")))
    check_widths(retain=retain, test=test, forget=forget)
    empty = [name for name, features in (("retain", retain), ("test", test), ("forget", forget)) if len(features) == 0]
    if empty:
        raise ValueError(f"mia_efficacy needs samples in every set; empty: {', '.join(empty)}")
    retain, test = balance(retain, test, np.random.default_rng(seed))
    attacker = SVC(C=3, gamma="auto", kernel="rbf")
    attacker.fit(np.concatenate([retain, test]), np.concatenate([np.ones(len(retain)), np.zeros(len(test))]))
    return float((attacker.predict(forget) == 0).mean())


def denoising_loss_features(adapter, images: torch.Tensor, labels, timesteps=(100, 300, 500, 700, 900),
                            seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Loss-threshold MIA features of a diffusion model: per-sample denoising loss (mean over elements) at fixed
    timesteps and fixed noise, (N, len(timesteps)), float32 on the CPU.

    `images`: (N, C, H, W) in [-1, 1]; `labels`: (N,) conditions (None for unconditional models). The noise for image
    i at timestep j depends only on (seed, i, j), never on `batch_size`, so two models scored with the same seed see
    identical draws. Latent models sample their VAE posterior in `encode` from the global RNG: seed it for a
    repeatable encoding.
    """
    if not getattr(adapter, "generative", True):
        raise ValueError("denoising_loss_features needs a diffusion model and this adapter is a classifier "
                         "(generative False): score its logits with classifier_features")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    bad = [t for t in timesteps if not 0 <= int(t) < adapter.num_train_timesteps]
    if bad:
        raise ValueError(f"timesteps {bad} are outside 0-{adapter.num_train_timesteps - 1}")
    device = next(adapter.denoiser.parameters()).device
    count = len(images)
    features = torch.empty(count, len(timesteps))
    noise = None  # drawn once the encoded shape is known, for all images and timesteps at once
    was_training = adapter.denoiser.training
    adapter.denoiser.eval()
    try:
        with torch.no_grad():
            for start in range(0, count, batch_size):
                part = slice(start, start + batch_size)
                x0 = adapter.encode(images[part].to(device))  # (B, *latent) for latent models
                if noise is None:
                    generator = torch.Generator().manual_seed(seed)
                    noise = torch.randn(count, len(timesteps), *x0.shape[1:], generator=generator)  # (N, T, *latent)
                condition = None if labels is None else torch.as_tensor(labels[part]).to(device)
                for index, t in enumerate(timesteps):
                    step = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=device)
                    eps = noise[part, index].to(device, x0.dtype)
                    features[part, index] = denoising_losses(adapter, x0, condition, timesteps=step, noise=eps,
                                                             reduction="mean").float().cpu()
    finally:
        adapter.denoiser.train(was_training)
    return features
