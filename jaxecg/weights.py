"""Weights sources: one reader behind every command and function that takes weights.

A source is a PyTorch file (read by ``convert``, the model kind and config given by
the caller), a ``convert.save`` directory, a ``jaxecg train`` run directory (its best
checkpoint when the run keeps one, else the newest), the run's ``checkpoints``
directory, or one step directory ``RUN/checkpoints/N``. Every reader returns a
:class:`LoadedModel`: the whole model's variables, its model kind
(``convert.targets.KINDS``) and config. ``pretrained_weights=``, ``load_encoder``,
``load_model``, ``jaxecg embed`` and ``jaxecg evaluate`` all go through here, so a run
directory works wherever weights are accepted.

This module sits below the training stack (it reads a run's checkpoint with Orbax
alone), so using a trained model never imports ``jaxecg.train``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxecg.config import Config
from jaxecg.errors import CheckpointError

PyTree = Any
CheckpointChoice = Literal["best", "latest"] | int

# The model kind (convert.targets.KINDS) each training task trains; a test checks it
# against the task registry's model config classes.
TASK_MODEL_KINDS = {
    "mae_pretrain": "mae",
    "simclr_pretrain": "simclr",
    "ecg_finetune": "ecg_classifier",
    "cmr_finetune": "cmr_classifier",
}
# Model kinds of the CMR modality (their training config records the input size).
CMR_KINDS = ("cmr_encoder", "cmr_classifier", "simclr")


class LoadedModel(NamedTuple):
    """A whole model as read from a source: ``variables`` for ``Module(config)`` of ``kind``.

    ``image_size`` is the CMR input size a training config recorded (else ``None``);
    ``origin`` says in words what was read (shown in transfer reports).
    """

    variables: dict[str, PyTree]
    kind: str
    config: Config
    image_size: int | None = None
    origin: str = ""


@dataclasses.dataclass(frozen=True)
class RunCheckpoint:
    """One checkpoint of a ``jaxecg train`` run: its step directory and the run's config.

    ``experiment`` is the run's config as saved (a JSON dict: ``task``, ``model``,
    ``loss``, ``data``, ``train``, ...); ``chosen`` says why this step (best/newest/asked).
    """

    step_dir: Path
    step: int
    experiment: dict[str, Any]
    chosen: str

    @property
    def workdir(self) -> Path:
        return self.step_dir.parent.parent


# ---------------------------------------------------------------------------- runs


def is_training_run(path: str | Path) -> bool:
    """Whether ``path`` is a run workdir, its ``checkpoints`` directory or one step directory."""
    path = Path(path)
    return _is_step_dir(path) or bool(_steps(_checkpoints_root(path)))


def _is_step_dir(path: Path) -> bool:
    return (path / "state").is_dir() and (path / "config").is_dir()


def _checkpoints_root(path: Path) -> Path:
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def _steps(root: Path) -> dict[int, Path]:
    if not root.is_dir():
        return {}
    return {int(p.name): p for p in root.iterdir() if p.name.isdigit() and _is_step_dir(p)}


def _read_json_item(step_dir: Path, item: str) -> dict[str, Any]:
    """An Orbax JSON item of a step (``config``) as a dict."""
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        return checkpointer.restore(step_dir / item)


def _step_metrics(step_dir: Path) -> dict[str, float]:
    """The validation metric a step was ranked by (Orbax's ``<step>/metrics`` item), or ``{}``."""
    path = step_dir / "metrics" / "metrics"
    return json.loads(path.read_text()) if path.is_file() else {}


def run_checkpoint(path: str | Path, checkpoint: CheckpointChoice = "best") -> RunCheckpoint:
    """The checkpoint of a run that ``checkpoint`` names.

    ``path``: the run's workdir, its ``checkpoints`` directory or a step directory
    (which is then the checkpoint, whatever ``checkpoint`` says). ``"best"``: the
    step ranked best by the run's ``train.best_metric``/``best_mode`` among those kept,
    else the newest; ``"latest"``: the newest; an int: that step.
    """
    path = Path(path).absolute()  # Orbax reads no metadata through a relative path
    if _is_step_dir(path):
        step_dir = path
        experiment = _read_json_item(step_dir, "config")
        return RunCheckpoint(step_dir, int(path.name), experiment, f"step {path.name}")
    steps = _steps(_checkpoints_root(path))
    if not steps:
        raise CheckpointError(
            f"{str(path)!r} is neither a convert.save directory (no convert.json) nor a "
            "training run (no checkpoints/<step>/state)"
        )
    newest = max(steps)
    experiment = _read_json_item(steps[newest], "config")
    if isinstance(checkpoint, int) and not isinstance(checkpoint, bool):
        if checkpoint not in steps:
            raise CheckpointError(
                f"{path}: no checkpoint of step {checkpoint}; kept steps: {sorted(steps)}"
            )
        return RunCheckpoint(steps[checkpoint], checkpoint, experiment, f"step {checkpoint}")
    if checkpoint == "latest":
        return RunCheckpoint(steps[newest], newest, experiment, "newest")
    if checkpoint != "best":
        raise CheckpointError(f"checkpoint must be 'best', 'latest' or a step, got {checkpoint!r}")
    train = experiment.get("train", {})
    metric, mode = train.get("best_metric", "loss"), train.get("best_mode", "min")
    ranked = {
        step: value
        for step, step_dir in steps.items()
        if math.isfinite(value := float(_step_metrics(step_dir).get(metric, math.nan)))
    }
    if not train.get("keep_best", 1) or not ranked:
        return RunCheckpoint(steps[newest], newest, experiment, "newest (no best checkpoint kept)")
    pick = max if mode == "max" else min
    best = pick(sorted(ranked), key=ranked.__getitem__)
    chosen = f"best by val {metric}={ranked[best]:.4g}"
    return RunCheckpoint(steps[best], best, experiment, chosen)


def read_run(path: str | Path, checkpoint: CheckpointChoice = "best") -> LoadedModel:
    """Model variables and config of one run checkpoint (see :func:`run_checkpoint`)."""
    return read_run_checkpoint(run_checkpoint(path, checkpoint))


def read_run_checkpoint(found: RunCheckpoint) -> LoadedModel:
    """Model variables and config of ``found`` (optimiser state is not read).

    The run's ``state`` item holds ``params``/``batch_stats``; SimCLR runs nest the
    model's params under ``"model"`` next to the online classifier's.
    """
    import orbax.checkpoint as ocp

    from convert.targets import BINDINGS

    task = found.experiment.get("task")
    if task not in TASK_MODEL_KINDS:
        raise CheckpointError(f"{found.step_dir}: unknown training task {task!r}")
    kind = TASK_MODEL_KINDS[task]
    target = BINDINGS[kind]
    config = target.config(found.experiment["model"])
    abstract = target.abstract(config)
    metadata = ocp.PyTreeCheckpointer().metadata(found.step_dir / "state").item_metadata.tree
    nested = "model" in metadata["params"] and "model" not in abstract["params"]
    item = {
        "params": {"model": abstract["params"]} if nested else abstract["params"],
        "batch_stats": abstract.get("batch_stats", {}),
    }
    # Restored as host numpy arrays: the run's device layout need not exist here.
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = ocp.PyTreeCheckpointer().restore(
        found.step_dir / "state",
        args=ocp.args.PyTreeRestore(item=item, restore_args=as_numpy, partial_restore=True),
    )
    params = restored["params"]["model"] if nested else restored["params"]
    variables = {"params": jax.tree.map(jnp.asarray, params)}
    if abstract.get("batch_stats"):
        variables["batch_stats"] = jax.tree.map(jnp.asarray, restored["batch_stats"])
    image_size = found.experiment.get("data", {}).get("augment", {}).get("img_size")
    origin = f"{task} run {found.workdir}, step {found.step} ({found.chosen})"
    return LoadedModel(variables, kind, config, image_size if kind in CMR_KINDS else None, origin)


# ---------------------------------------------------------------------------- any source


def read_directory(path: str | Path, checkpoint: CheckpointChoice = "best") -> LoadedModel:
    """A ``convert.save`` directory, or a training run's workdir / checkpoints / step dir."""
    from convert.store import SIDECAR

    path = Path(path)
    if (path / SIDECAR).is_file():
        import convert

        variables, kind, config = convert.restore(path)
        return LoadedModel(variables, kind, config, origin=f"convert.save directory {path}")
    return read_run(path, checkpoint)


def read_weights(source: str | Path, *, kind: str, config: Config) -> LoadedModel:
    """Any weights source as a whole model; ``kind``/``config`` say how to read a PyTorch file.

    A directory records its own kind and config (``kind``/``config`` are ignored); a
    PyTorch file is converted to ``kind`` with ``config`` and its conversion report
    printed.
    """
    path = Path(source)
    if path.is_dir():
        return read_directory(path)
    if not path.is_file():
        raise CheckpointError(f"weights source {str(source)!r} does not exist")
    import convert

    variables, report = convert.load(path, kind, config)
    print(report.summary(), flush=True)
    return LoadedModel(variables, kind, config, origin=f"PyTorch file {path}")
