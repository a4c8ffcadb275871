"""Output directories that appear only complete, and whose debris the next run removes.

A command writes into a hidden sibling ``.NAME.partial-HOST-PID-XXXX`` and renames it to
``NAME`` once everything is written (:meth:`StagedDirectory.commit`). An error or an
interrupt removes the partial directory; a ``kill -9`` cannot, so every new stage of the
same ``NAME`` first removes the partial directories of processes on this host that no
longer run. Partials of live processes, or of other hosts (whose processes cannot be
checked), are left alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from jaxecg.errors import UsageError

_MARK = ".partial-"


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _owner(partial: Path, prefix: str) -> tuple[str, int] | None:
    """``(host, pid)`` encoded in a partial directory's name, ``None`` if it is not ours."""
    # The name ends HOST-PID-RANDOM; mkdtemp's random part never holds a "-".
    host, _, pid = partial.name[len(prefix) :].rpartition("-")[0].rpartition("-")
    if not host or not pid.isdigit():
        return None
    return host, int(pid)


def remove_stale_partials(final: Path) -> list[Path]:
    """Delete the partial directories left for ``final`` by dead processes of this host."""
    prefix = f".{final.name}{_MARK}"
    host = socket.gethostname()
    removed = []
    for partial in final.parent.glob(f"{prefix}*"):
        owner = _owner(partial, prefix)
        if owner is None or owner[0] != host or _is_running(owner[1]) or not partial.is_dir():
            continue
        shutil.rmtree(partial, ignore_errors=True)
        removed.append(partial)
    return removed


class StagedDirectory:
    """``with StagedDirectory(out) as stage:`` write into ``stage.path``, then ``stage.commit()``.

    Leaving the block without :meth:`commit` (an error, an interrupt, a deliberate early
    return) removes everything written. ``final`` must not exist, or be an empty directory.
    """

    def __init__(self, final: str | Path) -> None:
        self.final = Path(final).absolute()
        self.path: Path | None = None
        self.committed = False

    def __enter__(self) -> Self:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.final)
        prefix = f".{self.final.name}{_MARK}{socket.gethostname()}-{os.getpid()}-"
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.final.parent))
        return self

    def commit(self) -> Path:
        """Rename the staged directory into place; returns the final path."""
        assert self.path is not None, "commit() outside the with block"
        if self.final.exists() and not (self.final.is_dir() and not any(self.final.iterdir())):
            raise UsageError(f"{self.final} appeared while writing it; the new output is discarded")
        os.replace(self.path, self.final)
        self.committed = True
        return self.final

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
