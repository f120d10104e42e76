"""What SA's published lambda means under `erase`'s conventions (docs/baselines.md).

SA's DDPM code (clear-nus/selective-amnesia; the copy in OPTML-Group/Unlearn-Saliency DDPM/) penalises
lambda * sum F_SA (theta - theta*)^2 beside denoising losses *summed* over pixels, with
F_SA = mean over generated samples x of (grad of sum_{t=0}^{T-1} l_sum(x, t))^2: the squared per-sample gradient of the
whole ELBO sum, every timestep, pixel sums. `erase`'s SA adds lambda * sum F (theta - theta*)^2 beside pixel-*mean*
losses, F = the mean over batches of 64 random (x, t) of the squared batch gradient of the pixel-mean loss
(erase.saliency.fisher_diagonal, as erase/methods/sa.py calls it). Dividing SA's objective by D (pixels per image)
gives erase's loss scale, so SA's lambda_SA equals erase's lambda = lambda_SA * F_SA / (D * F), per parameter.

This script measures F_SA / (D * F) on the shipped digit model's replay samples and prints its quantiles and the
ratio of sums, i.e. the `--ewc-lambda` of `erase unlearn --method sa` that SA's lambda = 10 corresponds to.
Run: python scripts/sa_fisher_convention.py   (about a minute on 2 CPU cores)"""

from __future__ import annotations

import argparse
import json

import torch


def sa_fisher(adapter, images, labels, timesteps_per_sample: int, generator) -> dict[str, torch.Tensor]:
    """SA's F: per sample, the gradient of sum_t l_sum(x, t) over all T timesteps, estimated by T/K times the sum
    over K stratified timesteps (one in each of K equal bands), squared; the mean over samples."""
    from erase.objectives import denoising_losses
    from erase.saliency import trainable_parameters

    params = trainable_parameters(adapter.denoiser)
    total = adapter.num_train_timesteps
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    edges = torch.linspace(0, total, timesteps_per_sample + 1)
    for image, label in zip(images, labels):
        offsets = torch.rand(timesteps_per_sample, generator=generator) * (edges[1:] - edges[:-1])
        t = (edges[:-1] + offsets).long().clamp(max=total - 1)
        x0 = image.expand(timesteps_per_sample, *image.shape)
        noise = torch.randn(x0.shape, generator=generator)
        losses = denoising_losses(adapter, x0, label.expand(timesteps_per_sample), t, noise, reduction="sum")
        grads = torch.autograd.grad(losses.sum() * (total / timesteps_per_sample), list(params.values()))
        for (name, _), g in zip(params.items(), grads):
            fisher[name] += g.pow(2) / len(images)
    return fisher


def main() -> None:
    from erase.engine import endless_batches
    from erase.methods.sa import generated_set
    from erase.models import SHIPPED_MODEL
    from erase.pipelines import load_adapter
    from erase.saliency import fisher_diagonal
    from accelerate import Accelerator

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forget", type=int, default=3, help="the erased digit (its class is left out of replay)")
    parser.add_argument("--per-class", type=int, default=16, help="replay images per remaining class (SA's default here)")
    parser.add_argument("--sa-samples", type=int, default=36, help="replay images in SA's per-sample Fisher")
    parser.add_argument("--timesteps", type=int, default=100, help="stratified timesteps per sample for SA's sum over T")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    adapter = load_adapter(SHIPPED_MODEL)
    adapter.denoiser.requires_grad_(True)
    remain = [c for c in range(10) if c != args.forget]
    replay = generated_set(adapter, remain, args.per_class, args.seed, 50, "replay")
    ours = fisher_diagonal(adapter, endless_batches(replay, 64, args.seed + 2, Accelerator(cpu=True), shard=False), 10,
                           max_grad_norm=None, description="erase's Fisher")
    pick = torch.randperm(len(replay.labels), generator=torch.Generator().manual_seed(args.seed))[: args.sa_samples]
    theirs = sa_fisher(adapter, replay.images[pick], replay.labels[pick], args.timesteps,
                       torch.Generator().manual_seed(args.seed + 1))
    pixels = replay.images[0].numel()
    ratio = torch.cat([(theirs[n] / (pixels * ours[n]).clamp_min(1e-30)).flatten() for n in ours])
    ratio = ratio[torch.isfinite(ratio) & (ratio > 0)]
    quantiles = {f"q{int(q * 100)}": float(ratio.quantile(q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)} if ratio.numel() < 2**24 \
        else {}
    sums = float(sum(t.sum() for t in theirs.values()) / (pixels * sum(o.sum() for o in ours.values())))
    print(json.dumps({"pixels": pixels, "F_SA / (D F) quantiles over entries": quantiles, "ratio of sums": sums,
                      "erase --ewc-lambda equal to SA's lambda 10 (median, ratio of sums)":
                          [10 * quantiles.get("q50", float("nan")), 10 * sums]}, indent=1))


if __name__ == "__main__":
    main()
