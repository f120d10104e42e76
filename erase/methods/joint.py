"""SFR-on "joint": the Euclidean baseline the SFR-on paper argues against (Huang et al. 2024, section 1c).

Same mask, forget objective and schedule as SFR-on, but one summed update per iteration:
    grad = mask * grad(alpha_t * forget objective) + grad(remain_alpha * remain loss)
instead of a masked forget step followed by a remain step. Comparing it with `sfron` measures what the
fast-slow (remain-geometry) update buys.
"""

from __future__ import annotations

from erase.engine import Runtime
from erase.methods.sfron import SFRonConfig, alpha_schedule, prepare_sfron


def joint(adapter, forget_data, remain_data, config: SFRonConfig, runtime: Runtime = Runtime(), mask=None,
        monitor=None) -> dict:
    run, mask, masked, forget_loss, remain_loss = prepare_sfron(
        adapter, forget_data, remain_data, config, runtime, mask, monitor)

    def iteration(step: int) -> dict:
        alpha = alpha_schedule(config.forget_alpha, step, config.steps, config.alpha_decay)
        forget, remain = run.stepper.step_parts([(lambda: forget_loss(alpha), masked), (remain_loss, None)])
        return {"forget": forget, "remain": remain}

    log = run.loop(["forget", "remain"], iteration, runtime, "SFR-on joint")
    return run.finish(log, mask)
