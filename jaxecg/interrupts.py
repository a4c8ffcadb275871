"""Ctrl-C and a cluster's SIGTERM as a flag that long loops poll, so they stop between units
of work (a training step, an embedding batch, a record) with their output resumable.

A loop runs inside :func:`stop_requests`, checks ``stop.requested`` after each unit,
saves what it has and raises :class:`Interrupted`, whose ``exit_code`` is the shell's
``128 + signal`` (130 for SIGINT, 143 for SIGTERM). A second Ctrl-C aborts at once
(the usual ``KeyboardInterrupt``) for a user who will not wait for the save.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from jaxecg.errors import JaxecgError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(JaxecgError):
    """A command stopped on SIGINT/SIGTERM after saving its progress; exit ``128 + signum``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopRequest:
    """Set by the first SIGINT/SIGTERM; ``signum`` says which."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort without saving
        self.signum = signum
        # os.write, not print: a handler may run inside another write to sys.stderr.
        os.write(2, f"\n{self.name} received: stopping after the work in flight\n".encode())


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Turn SIGINT/SIGTERM into ``StopRequest.requested`` inside the block, restoring the
    previous handlers on exit. Outside the main thread (where Python cannot install
    handlers) the flag simply never rises."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop._handle) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def ignore_in_worker() -> None:
    """Worker-process initializer: the parent alone decides how to stop on Ctrl-C (the
    terminal sends it to the whole process group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
