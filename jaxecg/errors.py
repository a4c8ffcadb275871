"""One family of errors: what jaxecg raises on purpose, so a CLI can tell it from a bug.

Every command prints a :class:`JaxecgError` as one line naming the cause (exit 2 for
bad input, 1 for a run that failed) and lets any other exception raise with its
traceback: a library's ``ValueError`` is a bug to report, not a message to the user.
Each class also derives from the builtin a caller would catch without knowing ours.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class JaxecgError(Exception):
    """Base of every error jaxecg raises deliberately; ``exit_code`` is what a CLI returns."""

    exit_code = 2


class ConfigError(JaxecgError, ValueError):
    """A config key is unknown, has the wrong type or value, or a preset does not exist."""


class UsageError(JaxecgError, ValueError):
    """Bad command-line input (a path, a flag's value, a combination of flags)."""


class DataError(JaxecgError, ValueError):
    """A record, label, split or dataset that cannot be used as given."""


class CheckpointError(JaxecgError, ValueError):
    """A checkpoint that is corrupt, of the wrong kind, or does not fit the model."""


class TrainingError(JaxecgError, RuntimeError):
    """A run that started but failed (e.g. a non-finite loss); its checkpoints are kept."""

    exit_code = 1


def run_command(name: str, body: Callable[[], int | None]) -> int:
    """Run a CLI body: our errors become one line ``jaxecg NAME: error: ...`` and their exit code."""
    try:
        return int(body() or 0)
    except JaxecgError as err:
        print(f"jaxecg {name}: error: {err}", file=sys.stderr)
        return err.exit_code
