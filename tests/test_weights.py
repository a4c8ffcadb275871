"""The one reader of weights sources: which checkpoint of a run it picks, the task → model
kind table, and the layering rule (using a model never imports the training stack)."""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import pytest

from convert.targets import BINDINGS
from jaxecg.errors import CheckpointError
from jaxecg.train.checkpoint import Checkpointer
from jaxecg.train.tasks import TASK_NAMES, get_task
from jaxecg.weights import TASK_MODEL_KINDS, is_training_run, run_checkpoint


def test_task_model_kinds_agree_with_the_task_registry() -> None:
    assert set(TASK_MODEL_KINDS) == set(TASK_NAMES)
    for task, kind in TASK_MODEL_KINDS.items():
        assert BINDINGS[kind].config_cls is get_task(task).model_config, task


def _run(workdir, metrics: dict[int, float | None], *, mode: str = "max", keep_best: int = 1):
    """A run directory whose steps were ranked by ``metrics`` (``None``: saved unranked)."""
    checkpoints = Checkpointer(
        workdir / "checkpoints",
        keep=len(metrics),
        keep_best=keep_best,
        best_metric="auroc",
        best_mode=mode,
        async_save=False,
    )
    train = {"best_metric": "auroc", "best_mode": mode, "keep_best": keep_best}
    for step, value in metrics.items():
        ranked = None if value is None else {"auroc": value}
        state = {"w": jnp.full((2,), float(step))}
        checkpoints.save(step, state, data_state=None, config={"train": train}, metrics=ranked)
    checkpoints.close()
    return workdir


def test_best_latest_and_named_steps(tmp_path) -> None:
    run = _run(tmp_path / "run", {2: 0.7, 4: 0.9, 6: 0.8, 8: None})
    assert is_training_run(run) and not is_training_run(tmp_path)
    best = run_checkpoint(run)
    assert (best.step, best.chosen) == (4, "best by val auroc=0.9")
    assert run_checkpoint(run, "latest").step == 8
    assert run_checkpoint(run, 6).step_dir == run / "checkpoints" / "6"
    # the checkpoints directory and one step directory are sources too
    assert run_checkpoint(run / "checkpoints").step == 4
    assert run_checkpoint(run / "checkpoints" / "2", "best").step == 2
    with pytest.raises(
        CheckpointError, match=r"no checkpoint of step 5; kept steps: \[2, 4, 6, 8\]"
    ):
        run_checkpoint(run, 5)


def test_min_mode_and_a_run_without_best(tmp_path) -> None:
    assert run_checkpoint(_run(tmp_path / "min", {1: 0.5, 2: 0.3, 3: 0.4}, mode="min")).step == 2
    unranked = run_checkpoint(_run(tmp_path / "none", {1: None, 2: None}, keep_best=0))
    assert (unranked.step, unranked.chosen) == (2, "newest (no best checkpoint kept)")


def test_a_directory_that_is_no_source_is_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no convert.json.*no checkpoints/<step>/state"):
        run_checkpoint(tmp_path)


def test_using_a_model_does_not_import_the_training_stack() -> None:
    code = (
        "import sys, jaxecg.encoders, jaxecg.embed, jaxecg.evaluate, jaxecg.probe, jaxecg.viz\n"
        "import convert.targets\n"
        "print(sorted(m for m in sys.modules if m.startswith('jaxecg.train')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
