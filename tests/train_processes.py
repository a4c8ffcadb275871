"""``jaxecg train`` in child processes that a test can signal or ``kill -9``, cheaply.

Children fork from a multiprocessing forkserver that imported the training stack once
(importing JAX and its libraries costs seconds a process) and inherit the session's
compilation cache (conftest's environment), so each start pays little more than the
run's set-up (tracing and lowering its programs, restoring).
Each child writes its stdout/stderr to its own log file.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

import jaxecg.train.cli

# What the forkserver imports once (by name: Python 3.11's forkserver does not see the
# tests directory on sys.path, so this module itself cannot be preloaded).
PRELOAD = ["jaxecg.train.cli", "jaxecg.train.loop", "jaxecg.train.tasks", "tensorboardX"]

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain_mae_ecg.yaml"
STEPS = 20
# The smallest MAE: 12 leads x 200 samples (24 patches), batch 4 (one example per device).
TINY = [
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "model.img_size=[1,12,200]",
    "data.augment.time_steps=200",
    "data.record_length=200",
    "data.num_train=32",
    "data.num_eval=4",
    "train.batch_size=4",
    f"train.steps={STEPS}",
    "train.eval_every=0",
    "optim.lr=1e-3",
    "train.progress_bar=false",
    "train.log_every=1",
]


def _child(argv: list[str], log: str) -> None:
    """Runs in the child: output to ``log``, the test session's JAX settings, the CLI."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")  # as conftest
    sys.exit(jaxecg.train.cli.main([str(CONFIG), *TINY, *argv]))


class Trainers:
    """Starts ``jaxecg train`` children (the tiny MAE above plus ``argv``) and waits on them."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)

    def start(self, log: Path, *argv: str) -> multiprocessing.Process:
        process = self._ctx.Process(target=_child, args=(list(argv), str(log)))
        process.start()
        return process

    def run(self, log: Path, *argv: str) -> int:
        """Start, wait, return the exit code."""
        process = self.start(log, *argv)
        process.join()
        return process.exitcode


def wait_for(condition, process: multiprocessing.Process, timeout: float = 300.0) -> bool:
    """Poll ``condition()`` until it holds (True) or ``process`` exits first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if not process.is_alive():
            return bool(condition())
        time.sleep(0.02)
    raise TimeoutError("the training child neither got there nor exited")
