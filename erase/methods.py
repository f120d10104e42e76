"""The erasure methods, by the name `erase unlearn --method` takes: (function, config dataclass)."""

from erase.sfron import SFRonConfig, sfron

METHODS = {
    "sfron": (sfron, SFRonConfig),
}
