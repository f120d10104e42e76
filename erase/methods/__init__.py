"""The erasure methods, by the name `erase unlearn --method` takes: (function, config dataclass).

Every method is `method(adapter, forget_data, remain_data, config, runtime, mask=None, monitor=None) -> result`
(`monitor`: an engine.Monitor evaluated every few steps, untimed) and returns the same fields (mask or None, mask sparsity, per-step losses, timings per phase, device, a method-specific record).
"""

from erase.methods.esd import ESDConfig, esd
from erase.methods.ga import GAConfig, ga
from erase.methods.joint import joint
from erase.methods.nabla_tau import NABLA_TAU_PRESETS, NablaTauConfig, nabla_tau
from erase.methods.rl import RLConfig, rl
from erase.methods.sa import SAConfig, sa
from erase.methods.salun import SalUnConfig, salun
from erase.methods.sfron import SFRON_PRESETS, SFRonConfig, sfron

METHODS = {
    "sfron": (sfron, SFRonConfig),
    "joint": (joint, SFRonConfig),
    "nabla_tau": (nabla_tau, NablaTauConfig),
    "ga": (ga, GAConfig),
    "rl": (rl, RLConfig),
    "salun": (salun, SalUnConfig),
    "esd": (esd, ESDConfig),
    "sa": (sa, SAConfig),
}
# Options of a method's config class that the method itself never reads: joint takes one summed step per iteration,
# so SFR-on's placement of alpha after clipping, its restore-or-gradient masking (the same update in one step) and
# its forget-step schedule have nothing to act on. They are not flags of that method and are refused if given.
NOT_READ = {"joint": ("alpha_placement", "mask_mode", "forget_every", "forget_dense")}


def option_names(method: str) -> list[str]:
    """The options `method` takes: its config fields, less those it never reads."""
    import dataclasses

    return [f.name for f in dataclasses.fields(METHODS[method][1]) if f.name not in NOT_READ.get(method, ())]


# The methods whose update reads a saliency mask (`--mask`, or the one they compute); the others update every trained
# weight, so a mask given to them is refused rather than recorded and ignored.
MASKED = ("sfron", "joint", "nabla_tau", "salun")
# The options that make a method's own mask: a mask given with `--mask` replaces it, so they are refused beside it.
MASK_OPTIONS = {
    "sfron": ("gamma", "fisher_batches", "fisher_groups", "fisher_batch_size", "fisher_guidance", "fisher_max_grad_norm"),
    "nabla_tau": ("mask_fraction", "saliency_batches"),
    "salun": ("mask_fraction", "saliency_batches"),
}
MASK_OPTIONS["joint"] = MASK_OPTIONS["sfron"]

# Named settings per backbone, applied under flags the user gives (`erase unlearn --preset`, default: the model's
# backbone). A method without an entry for a backbone runs at its config's defaults. "classifier"
# (erase/pipelines/classifier.py, cross-entropy losses): Nabla-tau's own rules, RL and SalUn with a random label per
# forget sample, one setting for every scenario otherwise. Why these values: docs/presets.md.
CLASSIFIER_PRESETS = {
    "sfron": {"batch_size": 128, "steps": 60, "lr": 1e-4, "forget_objective": "pseudo", "pseudo_random": True,
              "forget_alpha": 1.0, "fisher_batches": 10, "fisher_guidance": None},
    "nabla_tau": {"tau_source": "auto", "gap": "absolute", "lr": 1e-3, "lr_end_factor": 0.1, "steps": None,
                  "antithetic": False},
    "ga": {"steps": 10, "lr": 1e-4, "remain_alpha": 0.0},
    "rl": {"steps": 60, "lr": 1e-4, "remain_alpha": 1.0, "pseudo_random": True},
    "salun": {"steps": 60, "lr": 1e-4, "remain_alpha": 1.0, "pseudo_random": True},
}
PRESETS = {"sfron": SFRON_PRESETS, "nabla_tau": dict(NABLA_TAU_PRESETS)}
for _name, _values in CLASSIFIER_PRESETS.items():
    PRESETS.setdefault(_name, {})["classifier"] = _values
PRESETS["joint"] = {backbone: {k: v for k, v in values.items() if k not in NOT_READ["joint"]}
                    for backbone, values in SFRON_PRESETS.items()}  # SFR-on's, less what joint never reads
