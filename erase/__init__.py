"""erase: remove a class or concept from a trained diffusion model, and measure that it is gone.

    import erase
    pipeline, record = erase.unlearn(erase.SHIPPED_MODEL, forget=7)     # a folder or a diffusers object
    images, samples = erase.sample(pipeline, classes="0-9", n_per_condition=20)
    scores = erase.score(images, samples, classifier="digits")
    attacked = erase.attack(pipeline, forget=7)  # FA before / after a concept-inversion attack

The `erase` command calls these same functions (erase/api.py); method configs are typed dataclasses in
erase.methods (`from erase.methods import SFRonConfig`); errors derive from erase.errors.EraseError.
"""

__version__ = "0.1.0"

import logging  # noqa: E402

# diffusers imports bitsandbytes wherever it is installed (erase's --optimizer-8bit); on CPUs without the optional
# `kernels` package it logs a warning about a 4-bit kernel erase never uses, on every command. Errors still show.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from erase.api import grid, sample, score, unlearn  # noqa: E402
from erase.eval.attack import attack  # noqa: E402
from erase.errors import (DataError, EraseError, ModelError, NonFiniteLossError, OptionError, OutputError,  # noqa: E402
                          UsageError)
from erase.models import SHIPPED_MODEL  # noqa: E402

__all__ = ["unlearn", "sample", "grid", "score", "attack", "SHIPPED_MODEL", "EraseError", "UsageError", "ModelError",
           "OptionError", "DataError", "OutputError", "NonFiniteLossError", "__version__"]
