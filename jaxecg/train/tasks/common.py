"""Pieces several tasks share: pretrained-weight transfer, batch means, data sources."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxecg.config import ConfigError
from jaxecg.data import ECG_CLASSES, CMRAugmentConfig, ECGAugmentConfig
from jaxecg.data.splits import SYNTHETIC, check_labels, open_split
from jaxecg.errors import CheckpointError
from jaxecg.train.config import DataConfig
from jaxecg.train.optim import path_names

PyTree = Any


def mean_of(outputs: dict[str, np.ndarray], *keys: str) -> dict[str, float]:
    """Mean of each named output over all eval examples/batches."""
    return {key: float(np.mean(outputs[key])) for key in keys}


@dataclasses.dataclass(frozen=True)
class TransferReport:
    """What a transfer of pretrained weights did, by tensor path (``blocks_0/attn/qkv/kernel``).

    ``loaded``: model tensors taken from the source; ``initialised``: model tensors the
    source does not have (they keep their fresh initialisation, e.g. a new head);
    ``ignored``: source tensors this model has no place for (e.g. an MAE's decoder).
    """

    loaded: tuple[str, ...] = ()
    initialised: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    def __add__(self, other: TransferReport) -> TransferReport:
        return TransferReport(
            self.loaded + other.loaded,
            self.initialised + other.initialised,
            self.ignored + other.ignored,
        )

    def summary(self, origin: str) -> str:
        """One line: counts, with the paths grouped by their top-level module."""
        return (
            f"pretrained weights from {origin}: loaded {len(self.loaded)} tensors"
            f"{_modules(self.loaded)}, initialised {len(self.initialised)}"
            f"{_modules(self.initialised)}, ignored {len(self.ignored)}{_modules(self.ignored)}"
        )


def _modules(paths: tuple[str, ...]) -> str:
    """`` (head: 2, fc_norm: 2)``: how many of ``paths`` each top-level module holds."""
    if not paths:
        return ""
    counts: dict[str, int] = {}
    for path in paths:
        top = path.split("/")[0]
        top = "blocks" if top.startswith("blocks_") else top
        counts[top] = counts.get(top, 0) + 1
    return " (" + ", ".join(f"{name}: {n}" for name, n in counts.items()) + ")"


def merge_pretrained(
    target: PyTree, loaded: PyTree, *, source: str, drop_unknown: bool = False
) -> tuple[PyTree, TransferReport]:
    """``target`` with every leaf that ``loaded`` has at the same path replaced, and the report.

    Shapes must agree (a mismatch is an error naming every offending path);
    leaves only in ``target`` keep their initialisation (e.g. a new head). Paths
    only in ``loaded`` are an error (the trees do not line up) unless
    ``drop_unknown``, which reports and skips them (e.g. an MAE's decoder, which a
    classifier does not have).
    """
    flat_target = {path_names(p): x for p, x in jax.tree_util.tree_leaves_with_path(target)}
    flat_loaded = {path_names(p): x for p, x in jax.tree_util.tree_leaves_with_path(loaded)}
    unknown = sorted("/".join(p) for p in flat_loaded if p not in flat_target)
    mismatched = sorted(
        f"{'/'.join(p)}: checkpoint {np.shape(x)} vs model {np.shape(flat_target[p])}"
        for p, x in flat_loaded.items()
        if p in flat_target and np.shape(x) != np.shape(flat_target[p])
    )
    if (unknown and not drop_unknown) or mismatched:
        raise CheckpointError(
            f"pretrained weights {source!r} do not fit the model: "
            + "; ".join(
                (
                    [f"not in the model: {', '.join(unknown)}"]
                    if unknown and not drop_unknown
                    else []
                )
                + ([f"shape mismatch: {'; '.join(mismatched)}"] if mismatched else [])
            )
        )

    def pick(path: tuple[Any, ...], x: Any) -> Any:
        new = flat_loaded.get(path_names(path))
        return x if new is None else np.asarray(new, dtype=np.asarray(x).dtype)

    report = TransferReport(
        loaded=tuple("/".join(p) for p in flat_target if p in flat_loaded),
        initialised=tuple("/".join(p) for p in flat_target if p not in flat_loaded),
        ignored=tuple(unknown),
    )
    return jax.tree_util.tree_map_with_path(pick, target), report


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


def _splits(modality: str, data: Any, size: int, num_classes: int) -> tuple[Any, Any]:
    """``(train, val)`` of ``data`` (:func:`jaxecg.data.splits.open_split`); generated
    records are memoised."""
    train, val = (
        open_split(
            modality,
            split,
            source=data.source,
            num_records=data.num_train if split == "train" else data.num_eval,
            seed=data.seed,
            size=size,
            num_classes=num_classes,
        )
        for split in ("train", "val")
    )
    if data.source == SYNTHETIC:
        return _CachedSource(train), _CachedSource(val)
    return train, val


def ecg_datasets(data: ECGDataConfig, *, num_classes: int | None = None) -> tuple[Any, Any]:
    """``(train, eval)`` ECG sources; synthetic splits use seeds ``seed`` and ``seed + 1``
    and ``num_classes`` of the synthetic classes (all of them by default)."""
    classes = len(ECG_CLASSES) if num_classes is None else num_classes
    return _splits("ecg", data, data.record_length, classes)


def model_input_like(data: CMRDataConfig, batch: dict[str, Any]) -> jax.Array:
    """Zeros shaped like the model's input for a batch of stored frames: ``(B, S, S, C)``
    with ``S = data.augment.img_size`` (every view is resized/cropped to it)."""
    images = batch["image"]
    size = data.augment.img_size
    return jnp.zeros((images.shape[0], size, size, images.shape[-1]), jnp.float32)


def cmr_datasets(data: CMRDataConfig, *, num_classes: int) -> tuple[Any, Any]:
    """``(train, eval)`` CMR sources; synthetic splits use seeds ``seed`` and ``seed + 1``."""
    return _splits("cmr", data, data.image_size, num_classes)


def checked_classifier_datasets(
    data: Any, datasets: tuple[Any, Any], *, num_classes: int, multilabel: bool
) -> tuple[Any, Any]:
    """``datasets`` once their labels fit the classifier (:func:`check_labels`, per split)."""
    for split, records in zip(("train", "val"), datasets):
        check_labels(
            records,
            split=split,
            source=data.source,
            num_classes=num_classes,
            multilabel=multilabel,
            what="fine-tuning",
        )
    return datasets
