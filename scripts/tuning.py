"""The benchmark's tuning protocol (issue 11): one budget of configurations per method, tried on development digits
that are not test digits, and a selection rule fixed before any run.

GRIDS holds every method's configurations as `erase unlearn` flags (at most BUDGET each). The ranges come from the
method's published setting under this project's conventions (scripts/benchmark.py SETTINGS, SCALING_NOTE) and lie
around it (some only on one side) on the axes the papers name as their main knobs. Not yet run by `erase benchmark`.
"""

from __future__ import annotations

from itertools import product

BUDGET = 8  # configurations per method
FA_MAX = 0.05  # a configuration "erases" when its mean FA over the development digits is at most this


def grid(**axes) -> list[list]:
    """Every combination of `axes` (flag name without dashes -> values) as a flag list, in the order given."""
    names = list(axes)
    return [[part for name, value in zip(names, values) for part in (f"--{name.replace('_', '-')}", value)]
            for values in product(*(axes[name] for name in names))]


GRIDS = {
    # SFR-on DDPM: lr 1e-4, forget_alpha 10, 150 iterations; the cfg_unet preset runs 2e-4 for 120.
    "sfron": grid(lr=[1e-4, 2e-4], steps=[60, 120], forget_alpha=[5, 10]),
    "joint": grid(lr=[1e-4, 2e-4], steps=[60, 120], forget_alpha=[5, 10]),
    # Nabla-tau: lr 1e-4 for diffusion (1e-3 for the authors' classifiers); tau from the null condition or held out.
    "nabla_tau": grid(lr=[1e-4, 3e-4], steps=[150, 300], tau_source=["null", "heldout"], batch_size=[64]),
    # SalUn DDPM: 1000 steps at 1e-5 (= 100 at 1e-4 at equal lr x steps); remain weight 3.072 (its 1e-3 on a sum).
    "ga": grid(lr=[3e-5, 1e-4], steps=[50, 100], remain_alpha=[0, 3.072], batch_size=[64]),
    "rl": grid(lr=[1e-4, 2e-4], steps=[50, 100], remain_alpha=[1.536, 3.072], batch_size=[64]),
    "salun": grid(lr=[1e-4, 2e-4], steps=[50, 100], remain_alpha=[1.536, 3.072], batch_size=[64]),
    # ESD: 1000 steps at 1e-5, eta 1 to 2.
    "esd": grid(lr=[3e-5, 1e-4], steps=[50, 100], eta=[1, 2]),
    # SA DDPM: lr 1e-4 at 1000 steps (100 at 1e-3 here), EWC lambda 100.
    "sa": grid(lr=[3e-4, 1e-3], steps=[50, 100], ewc_lambda=[10, 100], batch_size=[64]),
}


def select(rows: list[dict], fa_max: float = FA_MAX) -> dict:
    """The rule fixed in advance: among rows (each with mean "fa" and "ra" over the development digits) with
    FA <= fa_max, the highest RA; if none erases, the lowest FA. Ties keep the earlier row (the grid's order)."""
    if not rows:
        raise ValueError("no configurations to choose from")
    erasing = [row for row in rows if row["fa"] <= fa_max]
    if erasing:
        return max(erasing, key=lambda row: row["ra"])  # max keeps the first of equal keys
    return min(rows, key=lambda row: row["fa"])
