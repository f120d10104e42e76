"""SalUn (Fan et al., ICLR 2024): gradient-magnitude weight saliency + random-label forgetting + remain loss.

mask = top `mask_fraction` of |grad L_forget| per entry, one global threshold over all trained parameters;
then RL's loss (with its conventions: SalUn's relative remain weight on pixel-mean terms, remain label dropout), with
gradient and update confined to the mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from erase.config import documented
from erase.engine import MaskedUpdate, Runtime, endless_batches
from erase.objectives import require_conditional
from erase.methods.rl import RELABEL_INSTEAD, RELABEL_ZERO, RLConfig, relabel_parts, start_relabel_run
from erase.saliency import gradient_magnitude, top_fraction_mask
from erase.memory import release_freed_memory
from erase.sharding import shard_mask


@documented
@dataclass
class SalUnConfig(RLConfig):
    mask_fraction: float = field(default=0.5, metadata={"range": "(0, 1]", "help": "share of entries the mask keeps (SalUn: 0.5)"})
    saliency_batches: int = field(default=20, metadata={"range": "[1, inf)", "help": "forget batches whose gradient sets the mask"})


def salun(adapter, forget_data, remain_data, config: SalUnConfig, runtime: Runtime = Runtime(), mask=None,
        monitor=None) -> dict:
    require_conditional(adapter, "--method salun", RELABEL_ZERO, RELABEL_INSTEAD)
    run = start_relabel_run(adapter, forget_data, remain_data, config, runtime, monitor)
    if mask is None:
        with run.timer.phase("mask"):
            batches = endless_batches(forget_data, config.batch_size, runtime.seed + 2, run.accelerator, shard=False)
            magnitude = gradient_magnitude(adapter, batches, config.saliency_batches, run.accelerator)
            mask = top_fraction_mask(magnitude, config.mask_fraction, sharded=run.stepper.sharded)
            del magnitude  # a float32 copy of every trained weight's size, not needed past the threshold
            release_freed_memory()
    elif run.stepper.sharded:
        mask = shard_mask(run.params(), mask)
    run.mask = mask
    masked = MaskedUpdate(run.params(), mask)
    forget_part, remain_part = relabel_parts(run, forget_data, remain_data, config)

    def iteration(step: int) -> dict:
        forget, remain = run.stepper.step_parts([(forget_part, masked), (remain_part, masked)], restrict=masked)
        return {"forget": forget, "remain": remain}

    log = run.loop(["forget", "remain"], iteration, runtime, "SalUn")
    return run.finish(log, mask)
