"""One thin wrapper around Orbax ``CheckpointManager`` for training runs.

A checkpoint at step ``s`` holds three items under ``<dir>/<s>/``:
``state`` (params, batch statistics, optimiser state, step — a pytree of
arrays), ``data`` (the input pipeline's iterator state, one JSON file per
process via Grain's handler) and ``config`` (the experiment config as JSON).
Retention keeps the ``keep`` most recent checkpoints plus the ``keep_best``
best by a validation metric. Restoring goes through an abstract target whose
leaves carry the mesh shardings, else the next ``jit`` fails with
"incompatible devices" (docs/reference.md#toolchain).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import grain.checkpoint
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxecg.errors import CheckpointError, ConfigError

PyTree = Any


class _IteratorSnapshot:
    """Iterator state frozen at save time, in the shape Grain's handler writes (JSON bytes).

    Snapshotting keeps an asynchronous save from recording a later position of a
    pipeline that keeps running; on restore it simply receives the state.
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state.decode())

    def start_prefetch(self) -> None:
        """Called by Grain's handler after ``set_state``; nothing runs here."""


def abstract_like(tree: PyTree, sharding: jax.sharding.Sharding | PyTree | None = None) -> PyTree:
    """``ShapeDtypeStruct`` leaves carrying ``sharding`` — one for all leaves, a tree of one per
    leaf, or (default) each array's own. The restore target: Orbax reads each leaf straight
    into that layout, whatever device count wrote it."""
    if sharding is None:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
        )
    if isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.tree.map(lambda _: sharding, tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding
    )


class Checkpointer:
    """Periodic + best-metric checkpoints of a run in ``directory`` (all processes call it)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int = 2,
        keep_best: int = 1,
        best_metric: str = "loss",
        best_mode: Literal["min", "max"] = "min",
        async_save: bool = True,
    ) -> None:
        if keep < 1 or keep_best < 0:
            raise ConfigError(
                f"need train.keep_checkpoints >= 1 and train.keep_best >= 0; got {keep}, {keep_best}"
            )
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        preserve = [policies.LatestN(n=keep)]
        if keep_best:
            preserve.append(
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    # BestN keeps the END of the ascending sort; for "min" the best must sort last.
                    reverse=best_mode == "min",
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            # With best_fn set Orbax also writes each step's metrics (<step>/metrics), so the
            # best step is known after a restart and to readers (jaxecg.weights).
            best_fn=(lambda metrics: metrics[best_metric]) if keep_best else None,
            best_mode=best_mode,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data", "config"), options=options
        )

    def latest_step(self) -> int | None:
        """The newest saved step (``None`` for an empty directory)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        data_state: dict[str, Any] | None,
        config: dict[str, Any],
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Write step ``step`` (asynchronously); ``metrics`` rank it for best-keeping."""
        ranked = None
        if metrics is not None and math.isfinite(metrics.get(self.best_metric, math.nan)):
            ranked = {self.best_metric: float(metrics[self.best_metric])}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_state)),
                config=ocp.args.JsonSave(config),
            ),
            metrics=ranked,
            force=True,
        )

    def restore(
        self, abstract_state: PyTree, step: int | None = None
    ) -> tuple[PyTree, dict[str, Any] | None, dict[str, Any]]:
        """``(state, data_state, config)`` of ``step`` (default: latest) onto the target shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        snapshot = _IteratorSnapshot()
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(snapshot),
                config=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], snapshot.state, restored["config"]

    def stored_config(self, step: int) -> dict[str, Any]:
        """The experiment config saved with ``step`` (read alone, before any state exists)."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return restored["config"]

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
