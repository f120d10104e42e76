"""What erase raises on purpose. Every class derives from `EraseError`; the bad-input ones from `UsageError`,
which the `erase` command prints as one line and exit code 2. Python callers catch them like any exception:
the API never calls `sys.exit`.

Messages name an option the way the caller spelled it: `--forget-class` on the command line, `forget` in Python
(`option`; the command line switches the spelling with `command_line_spelling`).
"""

from __future__ import annotations

import contextlib
import contextvars

_COMMAND_LINE = contextvars.ContextVar("erase_command_line_spelling", default=False)


class EraseError(Exception):
    """Base class of erase's own errors."""


class UsageError(EraseError):
    """Bad input: the message names the problem and the fix; nothing was written."""


class ModelError(UsageError):
    """A model folder or object erase cannot use: missing, damaged, or of an unsupported kind."""


class OptionError(UsageError):
    """An option out of its range, unknown, of another method, or not applicable to this model."""


class DataError(UsageError):
    """Images, prompt files or a data set that cannot be read or do not fit the model."""


class OutputError(UsageError):
    """An output path that exists, overlaps the input, or holds an earlier run's state."""


class NonFiniteLossError(UsageError):
    """Training produced a NaN or infinite loss; nothing was written."""

    def __init__(self, phase: str, step: int):
        self.phase, self.step = phase, step
        super().__init__(
            f"the {phase} loss became non-finite at step {step}; nothing was written. "
            f"Lower {option('--lr')} or {option('--forget-alpha')}, or keep {option('--max-grad-norm')} on."
        )


def option(flag: str, keyword: str | None = None) -> str:
    """An option's name in a message: `flag` ('--forget-class') on the command line, else `keyword` (default: the
    flag as a Python keyword, 'forget_class')."""
    if _COMMAND_LINE.get():
        return flag
    return keyword if keyword is not None else flag.lstrip("-").replace("-", "_")


@contextlib.contextmanager
def command_line_spelling():
    """Within this block, messages name options by their command-line flags (the `erase` command's main)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)
