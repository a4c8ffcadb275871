"""Pieces several tasks share: pretrained-weight merging, batch means, data sources."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxecg.data import (
    ECG_CLASSES,
    ArraySource,
    CMRAugmentConfig,
    ECGAugmentConfig,
    SyntheticCMRSource,
    SyntheticECGSource,
    load_split,
)
from jaxecg.errors import CheckpointError, ConfigError, DataError
from jaxecg.train.config import DataConfig
from jaxecg.train.optim import path_names

PyTree = Any


def mean_of(outputs: dict[str, np.ndarray], *keys: str) -> dict[str, float]:
    """Mean of each named output over all eval examples/batches."""
    return {key: float(np.mean(outputs[key])) for key in keys}


def merge_pretrained(
    target: PyTree, loaded: PyTree, *, source: str, drop_unknown: bool = False
) -> PyTree:
    """``target`` with every leaf that ``loaded`` has at the same path replaced.

    Shapes must agree (a mismatch is an error naming every offending path);
    leaves only in ``target`` keep their initialisation (e.g. a new head). Paths
    only in ``loaded`` are an error (the trees do not line up) unless
    ``drop_unknown``, which reports and skips them (e.g. an encoder's final
    ``norm`` that a pooling classifier does not have).
    """
    flat_target = {path_names(p): x for p, x in jax.tree_util.tree_leaves_with_path(target)}
    flat_loaded = {path_names(p): x for p, x in jax.tree_util.tree_leaves_with_path(loaded)}
    unknown = sorted("/".join(p) for p in flat_loaded if p not in flat_target)
    mismatched = sorted(
        f"{'/'.join(p)}: checkpoint {np.shape(x)} vs model {np.shape(flat_target[p])}"
        for p, x in flat_loaded.items()
        if p in flat_target and np.shape(x) != np.shape(flat_target[p])
    )
    if drop_unknown and unknown:
        print(f"pretrained weights {source}: not used by this model: {', '.join(unknown)}")
        unknown = []
    if unknown or mismatched:
        raise CheckpointError(
            f"pretrained weights {source!r} do not fit the model: "
            + "; ".join(
                ([f"not in the model: {', '.join(unknown)}"] if unknown else [])
                + ([f"shape mismatch: {'; '.join(mismatched)}"] if mismatched else [])
            )
        )

    def pick(path: tuple[Any, ...], x: Any) -> Any:
        new = flat_loaded.get(path_names(path))
        return x if new is None else np.asarray(new, dtype=np.asarray(x).dtype)

    return jax.tree_util.tree_map_with_path(pick, target)


def load_variables(source: str, kind: str, config: Any) -> tuple[dict[str, PyTree], str]:
    """Variables of ``kind`` from a PyTorch file (via ``convert``, report printed) or an Orbax
    directory written by ``convert.save``; returns ``(variables, kind actually stored)``."""
    import convert

    path = Path(source)
    if not path.exists():
        raise ConfigError(f"pretrained_weights: {source!r} does not exist")
    if path.is_dir():
        variables, stored_kind, _ = convert.restore(path)
        return variables, stored_kind
    variables, report = convert.load(source, kind, config)
    print(report.summary(), flush=True)
    return variables, kind


# ---------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class ECGDataConfig(DataConfig):
    """ECG records: synthetic ``record_length`` samples at 500 Hz, cropped by ``augment``."""

    record_length: int = 5000
    augment: ECGAugmentConfig = dataclasses.field(default_factory=ECGAugmentConfig)


@dataclasses.dataclass(frozen=True)
class CMRDataConfig(DataConfig):
    """CMR frames: synthetic ``image_size``² RGB frames, resized/augmented by ``augment``."""

    image_size: int = 210
    augment: CMRAugmentConfig = dataclasses.field(default_factory=CMRAugmentConfig)


class _CachedSource:
    """Memoises a lazily generated source, so synthetic records are built once per run."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._get = functools.lru_cache(maxsize=None)(source.__getitem__)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self._get(int(index))


def check_time_steps(time_steps: int, img_size: tuple[int, int, int]) -> None:
    """The augmentation crop must produce the model's input length."""
    if time_steps != img_size[2]:
        raise ConfigError(
            f"data.augment.time_steps={time_steps} must equal the model's input length "
            f"model.img_size[2]={img_size[2]}"
        )


def ecg_datasets(data: ECGDataConfig, *, num_classes: int | None = None) -> tuple[Any, Any]:
    """``(train, eval)`` ECG sources; synthetic splits use seeds ``seed`` and ``seed + 1``
    and ``num_classes`` of the synthetic classes (all of them by default)."""
    if data.source == "synthetic":
        make = functools.partial(
            SyntheticECGSource,
            length=data.record_length,
            num_classes=len(ECG_CLASSES) if num_classes is None else num_classes,
        )
        return (
            _CachedSource(make(data.num_train, seed=data.seed)),
            _CachedSource(make(data.num_eval, seed=data.seed + 1)),
        )
    return load_split(data.source, "train"), load_split(data.source, "val")


def _cmr_split(directory: str, split: str) -> ArraySource:
    """``<dir>/<split>_image.npy`` (N, H, W, 3) float32 in [0, 1] + ``<split>_label.npy`` (N,)
    int32, memory-mapped (the data package's on-disk format covers ECGs only)."""
    root = Path(directory)
    files = {key: root / f"{split}_{key}.npy" for key in ("image", "label")}
    absent = [str(f) for f in files.values() if not f.is_file()]
    if absent:
        raise DataError(
            f"data.source={directory!r}: a CMR dataset directory needs {split}_image.npy and "
            f"{split}_label.npy; missing {absent}"
        )
    return ArraySource({key: np.load(f, mmap_mode="r") for key, f in files.items()})


def model_input_like(data: CMRDataConfig, batch: dict[str, Any]) -> jax.Array:
    """Zeros shaped like the model's input for a batch of stored frames: ``(B, S, S, C)``
    with ``S = data.augment.img_size`` (every view is resized/cropped to it)."""
    images = batch["image"]
    size = data.augment.img_size
    return jnp.zeros((images.shape[0], size, size, images.shape[-1]), jnp.float32)


def cmr_datasets(data: CMRDataConfig, *, num_classes: int) -> tuple[Any, Any]:
    """``(train, eval)`` CMR sources; synthetic splits use seeds ``seed`` and ``seed + 1``."""
    if data.source == "synthetic":
        make = functools.partial(SyntheticCMRSource, size=data.image_size, num_classes=num_classes)
        return (
            _CachedSource(make(data.num_train, seed=data.seed)),
            _CachedSource(make(data.num_eval, seed=data.seed + 1)),
        )
    return _cmr_split(data.source, "train"), _cmr_split(data.source, "val")
