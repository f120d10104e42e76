"""Errors the command line turns into a one-line message and exit code 2."""


class UsageError(Exception):
    """Bad input: the message names the problem and the fix."""


class NonFiniteLossError(UsageError):
    """Training produced a NaN or infinite loss; nothing was written."""

    def __init__(self, phase: str, step: int):
        self.phase, self.step = phase, step
        super().__init__(
            f"the {phase} loss became non-finite at step {step}; nothing was written. "
            "Lower --lr or --forget-alpha, or keep --max-grad-norm on."
        )
