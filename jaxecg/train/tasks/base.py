"""What the generic training loop needs from a task, and the registry entry of a task.

A task owns its model, data, optimiser and objective; the loop
(:mod:`jaxecg.train.loop`) owns the mesh, ``jit``, logging and checkpoints.
Batches are dicts of arrays with the example axis first; everything random
inside a step (masking, dropout, augmentation) is drawn from the ``rng`` the
loop derives from the seed and the step number, so a resumed run replays the
same draws as an uninterrupted one.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import optax

from jaxecg.config import Config, ConfigError
from jaxecg.models.precision import DEFAULT_DTYPE, with_precision
from jaxecg.train.optim import make_schedule

if TYPE_CHECKING:
    from jaxecg.train.config import ExperimentConfig

PyTree = Any
Batch = dict[str, Any]


class Task(abc.ABC):
    """One training objective (MAE, SimCLR, ECG or CMR fine-tuning)."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg

    def model_config(self) -> Config:
        """``cfg.model`` as the run builds it: ``train.mixed_precision`` sets its compute
        ``dtype`` to bf16 (parameters keep ``param_dtype``), ``train.remat`` its ``remat``."""
        model, train = self.cfg.model, self.cfg.train
        if train.mixed_precision:
            if model.dtype not in (DEFAULT_DTYPE, "bfloat16"):
                raise ConfigError(
                    f"train.mixed_precision=true computes in bfloat16, but model.dtype is "
                    f"{model.dtype!r}; drop one of the two"
                )
            model = with_precision(model, dtype="bfloat16")
        if train.remat:
            if not hasattr(model, "remat"):
                raise ConfigError(
                    f"train.remat=true: task {self.cfg.task}'s {type(model).__name__} has no "
                    "transformer blocks to rematerialise"
                )
            model = dataclasses.replace(model, remat=True)
        return model

    def main_schedule(
        self, steps_per_epoch: int, total_steps: int | None
    ) -> tuple[optax.Schedule, int]:
        """``(schedule, total steps)`` of ``cfg.optim`` in real steps."""
        return make_schedule(
            self.cfg.optim, steps_per_epoch=steps_per_epoch, total_steps=total_steps
        )

    @abc.abstractmethod
    def datasets(self) -> tuple[Any, Any]:
        """``(train, eval)`` random-access datasets of example dicts (numpy arrays)."""

    @abc.abstractmethod
    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, PyTree]:
        """Fresh ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` may be ``{}``)."""

    @abc.abstractmethod
    def optimizer(
        self, params: PyTree, *, steps_per_epoch: int, total_steps: int | None
    ) -> tuple[optax.GradientTransformation, optax.Schedule, int]:
        """``(tx, schedule of the main lr, total steps)`` for the parameter tree ``params``."""

    @abc.abstractmethod
    def loss(
        self, params: PyTree, batch_stats: PyTree, batch: Batch, rng: jax.Array
    ) -> tuple[jax.Array, tuple[PyTree, dict[str, jax.Array]]]:
        """Training objective → ``(objective, (new batch_stats, scalar metrics incl. "loss"))``."""

    @abc.abstractmethod
    def eval_outputs(
        self, params: PyTree, batch_stats: PyTree, batch: Batch, rng: jax.Array
    ) -> dict[str, jax.Array]:
        """Per-example arrays (leading axis = batch) that :meth:`summarize` turns into metrics."""

    @abc.abstractmethod
    def summarize(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Validation metrics from the concatenated :meth:`eval_outputs` of all eval batches."""

    def load_pretrained(self, variables: dict[str, PyTree], source: str) -> dict[str, PyTree]:
        """``variables`` with the pretrained part replaced by the weights at ``source``."""
        raise ConfigError(f"task {type(self).__name__} does not take pretrained_weights")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Registry entry: the config classes of a task's sections and its constructor.

    ``classes_from``: the modality (``"ecg"``/``"cmr"``) of a classifier whose
    ``model.num_classes``, when left unset, is the dataset's class count.
    """

    name: str
    model_config: type[Config]
    loss_config: type[Config]
    data_config: type[Config]
    build: Callable[[ExperimentConfig], Task]
    classes_from: str | None = None
