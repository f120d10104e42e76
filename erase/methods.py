"""The erasure methods, by the name `erase unlearn --method` takes: (function, config dataclass).

Every method is `method(adapter, forget_data, remain_data, config, runtime, mask=None, monitor=None) -> result`
(`monitor`: an engine.Monitor evaluated every few steps, untimed) and returns the same fields (mask or None, mask sparsity, per-step losses, timings per phase, device, a method-specific record).
"""

from erase.esd import ESDConfig, esd
from erase.ga import GAConfig, ga
from erase.joint import joint
from erase.nabla_tau import NablaTauConfig, nabla_tau
from erase.rl import RLConfig, rl
from erase.sa import SAConfig, sa
from erase.salun import SalUnConfig, salun
from erase.sfron import SFRON_PRESETS, SFRonConfig, sfron

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

# Named settings per backbone, applied under flags the user gives (`erase unlearn --preset`, default: the model's
# backbone). A method without an entry for a backbone runs at its config's defaults.
PRESETS = {"sfron": SFRON_PRESETS, "joint": SFRON_PRESETS}
