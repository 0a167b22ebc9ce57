"""The one exception type a user can cause.

Anything the user can fix (bad YAML, unknown family, missing data, a checkpoint
that does not match) raises ``BenchError`` with a one-line message that says
what to do. The CLI prints it without a traceback and exits with status 2.
"""
from __future__ import annotations


class BenchError(Exception):
    """A user-facing error: one line, says what is wrong and how to fix it."""

    exit_code = 2


class Interrupted(BenchError):
    """Ctrl-C while a run's cells (or trials) ran: the finished ones are kept, ``--resume`` runs the rest."""

    exit_code = 130


class Diverged(Exception):
    """Raised inside training when a loss is NaN/inf or explodes; ends the cell as ``diverged``."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"diverged at step {step}: {reason}")
        self.step = step
        self.reason = reason
