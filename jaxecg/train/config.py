"""Typed experiment configs: YAML files plus ``key.sub=value`` overrides.

An experiment file has the sections ``task``, ``model`` (the task's model
config, optionally starting from ``preset: NAME``), ``loss`` (the task's loss
options), ``data``, ``optim``, ``train``, ``distributed`` and an optional
top-level ``pretrained_weights``. Everything is parsed by
:meth:`jaxecg.config.Config.from_dict`, so an unknown key or a wrong type is a
:class:`~jaxecg.config.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from jaxecg.config import Config, ConfigError, parse_value, read_yaml
from jaxecg.errors import DataError

__all__ = [
    "DataConfig",
    "DistributedConfig",
    "ExperimentConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "parse_value",
]

TaskName = Literal["mae_pretrain", "simclr_pretrain", "ecg_finetune", "cmr_finetune"]


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """Where the examples come from; each task extends it with its augmentation settings.

    ``source`` is ``"synthetic"`` (built-in generated data) or the path of a
    prepared dataset; ``num_train``/``num_eval`` size the synthetic splits.

    ``on_device=true`` loads the whole training split once into device memory, its
    records split over the devices (:mod:`jaxecg.train.on_device`): each step then
    receives only the batch's record indices, from the same shuffled, sharded, resumable
    index stream as the host loader (so the same batches for the same ``seed``, and the
    same checkpointed input position), and gathers the rows inside the compiled step
    before cropping/augmenting them as usual. The split must fit on the devices: a split
    larger than a device's free memory is an error giving the byte count (where JAX
    reports device memory; it does not on CPU). Evaluation keeps the host loader.
    ``on_device_dtype``: the stored dtype of the floating-point record arrays (``ecg``,
    ``image``; never ``label``), ``bfloat16`` halving the memory; the gathered rows are
    cast back to float32, so the step computes as from a float32 split of the rounded
    values.
    """

    source: str = "synthetic"
    num_train: int = 512
    num_eval: int = 128
    seed: int = 0
    on_device: bool = False
    on_device_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        if self.on_device_dtype != "float32" and not self.on_device:
            raise ConfigError(
                f"data.on_device_dtype={self.on_device_dtype} only applies with data.on_device=true"
            )


@dataclasses.dataclass(frozen=True)
class OptimConfig(Config):
    """Optimiser and learning-rate schedule; lengths in epochs (converted to steps).

    ``schedule``: ``warmup_cosine`` (bolts LinearWarmupCosineAnnealingLR),
    ``cosine`` (torch CosineAnnealingLR) or ``constant``. ``layer_decay`` < 1
    scales each ViT layer's lr by ``layer_decay ** (L - layer_id)`` (docs/reference.md#layer-decay);
    1.0 switches it off.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    layer_decay: float = 1.0
    schedule: Literal["warmup_cosine", "cosine", "constant"] = "cosine"
    epochs: float = 1.0
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    warmup_start_lr: float = 0.0

    RETIRED: ClassVar[dict[str, tuple[Any, str]]] = {
        "freeze_encoder": (False, "it was never read; use model.freeze_encoder")
    }


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Loop settings. ``steps`` (total optimiser steps) overrides ``optim.epochs``.

    ``eval_every``/``checkpoint_every``: in steps; ``None`` means once per epoch,
    ``0`` never (a final checkpoint is still written). ``stop_after`` ends this
    invocation after that many total steps without changing the schedule (a
    time-boxed job that a later ``--resume`` continues). ``mixed_precision``: the
    model computes in bf16 (its ``dtype``), parameters and optimiser state stay fp32.
    ``remat``: rematerialise the transformer blocks (the model's ``remat``).
    ``log_every``: steps between fetches of the metrics from the devices (also at
    evaluations and checkpoints); in between, the host enqueues steps without waiting
    (a fetch every step costs the tiny MAE ~1.4x in steps/s on 4 CPU devices).

    ``param_sharding``: ``replicated`` (every device holds all parameters and optimiser
    state) or ``fsdp`` (each large tensor split over the devices; see
    :func:`jaxecg.train.mesh.state_shardings`). ``grad_accum=N`` averages the gradients
    of ``N`` micro-batches of ``batch_size / N`` in one optimiser step (see
    :func:`jaxecg.train.loop.make_train_step` for BatchNorm and random draws).
    """

    workdir: str = "runs/default"
    batch_size: int = 32
    eval_batch_size: int | None = None
    steps: int | None = None
    eval_every: int | None = None
    eval_batches: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    keep_best: int = 1
    best_metric: str = "loss"
    best_mode: Literal["min", "max"] = "min"
    log_every: int = 10
    seed: int = 0
    mixed_precision: bool = False
    remat: bool = False
    stop_after: int | None = None
    progress_bar: bool = True
    param_sharding: Literal["replicated", "fsdp"] = "replicated"
    grad_accum: int = 1

    def __post_init__(self) -> None:
        # Counts must be >= 1, intervals (0 = never) >= 0; None keeps the default.
        minimum = {
            "batch_size": 1,
            "eval_batch_size": 1,
            "steps": 1,
            "eval_every": 0,
            "eval_batches": 1,
            "checkpoint_every": 0,
            "keep_checkpoints": 1,
            "keep_best": 0,
            "log_every": 1,
            "stop_after": 1,
            "grad_accum": 1,
        }
        for key, low in minimum.items():
            value = getattr(self, key)
            if value is not None and value < low:
                raise ConfigError(f"train.{key} must be >= {low}, got {value}")


@dataclasses.dataclass(frozen=True)
class DistributedConfig(Config):
    """``jax.distributed`` settings; ``coordinator_address=None`` means one process."""

    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(Config):
    """One training run. ``model``/``loss``/``data`` are the config classes of ``task``."""

    task: TaskName
    model: Config
    loss: Config
    data: Config
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()
    pretrained_weights: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, _prefix: str = "") -> Self:
        """Parse, resolving the ``model``/``loss``/``data`` sections with the task's classes."""
        from jaxecg.train.tasks import get_task  # the task registry imports the models

        if not isinstance(data, dict):
            raise ConfigError(f"an experiment config must be a mapping, got {data!r}")
        if "task" not in data:
            raise ConfigError("missing key 'task'")
        spec = get_task(data["task"])
        rest = dict(data)
        model = _num_classes_from_data(spec.classes_from, rest.pop("model", {}), rest.get("data"))
        model = _with_preset(spec.model_config, model, f"{_prefix}model.")
        loss = _section(spec.loss_config, rest.pop("loss", {}), f"{_prefix}loss.")
        data_ = _section(spec.data_config, rest.pop("data", {}), f"{_prefix}data.")
        return super().from_dict(
            {**rest, "model": model, "loss": loss, "data": data_}, _prefix=_prefix
        )


def _num_classes_from_data(modality: str | None, model: Any, data: Any) -> Any:
    """A classifier's ``model`` section with an unset ``num_classes`` (absent or null) taken
    from the dataset's class count, so labels and outputs agree by construction."""
    if modality is None or not isinstance(model, dict) or model.get("num_classes") is not None:
        return model
    from jaxecg.data.splits import SYNTHETIC, dataset_num_classes

    source = data.get("source", SYNTHETIC) if isinstance(data, dict) else SYNTHETIC
    try:
        return {**model, "num_classes": dataset_num_classes(modality, source)}
    except DataError as err:
        raise ConfigError(
            f"model.num_classes is unset and cannot come from the data: {err}"
        ) from None


def _section(config_cls: type[Config], value: Any, prefix: str) -> Config:
    if isinstance(value, config_cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{prefix[:-1]}: expected a mapping, got {value!r}")
    return config_cls.from_dict(value, _prefix=prefix)


def _with_preset(config_cls: type[Config], value: Any, prefix: str) -> Config:
    """``{"preset": NAME, **overrides}`` → the preset's fields updated by the overrides."""
    if isinstance(value, dict) and "preset" in value:
        value = dict(value)
        name = value.pop("preset")
        if name not in config_cls.PRESETS:
            raise ConfigError(
                f"{prefix}preset: unknown {config_cls.__name__} preset {name!r}; "
                f"choose from {sorted(config_cls.PRESETS)}"
            )
        value = {**config_cls.PRESETS[name], **value}
    return _section(config_cls, value, prefix)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (copied); new keys are allowed here.

    Unknown keys are caught afterwards by the typed parse, which names them.
    """
    out = _deep_copy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        parts = key.split(".")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {key!r}: {where!r} is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(text)
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment file, apply ``key.sub=value`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = read_yaml(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return ExperimentConfig.from_dict(apply_overrides(data, list(overrides)))
