"""The splits of a training config's dataset, readable without the training stack.

A data section (``data.source``, ``num_train``/``num_eval``, ``seed``, sizes) names
either the built-in synthetic data or a directory. Training reads ``train`` and
``val``; ``jaxecg evaluate`` reads ``val`` or ``test`` of the same dataset, so both go
through :func:`open_split`. Synthetic splits are seeded ``seed`` (train), ``seed + 1``
(val) and ``seed + 2`` (test); val and test have ``num_eval`` records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from jaxecg.data.dataset import read_manifest
from jaxecg.data.sources import ArraySource, SyntheticCMRSource, SyntheticECGSource
from jaxecg.data.synthetic import CMR_CLASSES, ECG_CLASSES
from jaxecg.errors import ConfigError, DataError

Modality = Literal["ecg", "cmr"]
SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "test": 2}
SYNTHETIC = "synthetic"


def open_split(
    modality: Modality,
    split: str,
    *,
    source: str = SYNTHETIC,
    num_records: int,
    seed: int = 0,
    size: int,
    num_classes: int,
) -> Any:
    """The records of one split: ``len`` + ``[i] -> {"ecg" | "image": ..., "label": ...}``.

    ``num_records``/``seed``/``size`` (ECG record length or CMR frame size) shape a
    synthetic split; a directory is an ECG dataset of ``jaxecg preprocess`` or, for CMR,
    ``<split>_image.npy`` + ``<split>_label.npy``.
    """
    if split not in SPLIT_SEED_OFFSET:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLIT_SEED_OFFSET)}")
    if source == SYNTHETIC:
        split_seed = seed + SPLIT_SEED_OFFSET[split]
        if modality == "ecg":
            return SyntheticECGSource(
                num_records, seed=split_seed, length=size, num_classes=num_classes
            )
        return SyntheticCMRSource(num_records, seed=split_seed, size=size, num_classes=num_classes)
    if modality == "ecg":
        from jaxecg.data.dataset import load_split

        try:
            return load_split(source, split)
        except ValueError as err:
            raise DataError(f"data.source={source!r}: {err}") from err
    return _cmr_split(source, split)


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


def class_names(modality: Modality, source: str, num_classes: int) -> list[str]:
    """Names of the classes, in label order: the dataset manifest's ``"classes"`` when it
    has them, the synthetic data's names, else ``class_<i>``."""
    if source == SYNTHETIC:
        names = ECG_CLASSES if modality == "ecg" else CMR_CLASSES
        return list(names[:num_classes])
    manifest = Path(source) / "manifest.json"
    if manifest.is_file():
        classes = read_manifest(source).get("classes")
        if classes and len(classes) == num_classes:
            return list(classes)
    return [f"class_{i}" for i in range(num_classes)]


def dataset_num_classes(modality: Modality, source: str) -> int:
    """How many classes a dataset has: the synthetic data's, the manifest's ``"classes"``,
    the width of multi-hot targets, else the largest train label id + 1."""
    if source == SYNTHETIC:
        return len(ECG_CLASSES if modality == "ecg" else CMR_CLASSES)
    if (Path(source) / "manifest.json").is_file():
        manifest = read_manifest(source)
        if manifest.get("classes"):
            return len(manifest["classes"])
        if manifest.get("label_shape"):
            return int(manifest["label_shape"][0])
    labels = open_split(modality, "train", source=source, num_records=0, size=0, num_classes=0)
    ids = np.asarray(labels.array("label"))
    if ids.size == 0:
        raise DataError(f"data.source={source!r}: the train split is empty; no classes to count")
    return int(ids.max()) + 1


def check_labels(
    records: Any,
    *,
    split: str,
    source: str,
    num_classes: int,
    multilabel: bool,
    what: str = "the run",
) -> None:
    """Errors (one line, before anything compiles) when a split cannot train or score the model.

    An empty split; multi-hot targets for a multiclass loss, or of another width than
    ``model.num_classes``; class ids outside ``[0, num_classes)``; train ids that use
    fewer classes than the model has outputs. Generated (synthetic) splits are in range
    by construction and only checked for emptiness.
    """
    where = f"data.source={source!r}, split {split!r}"
    if len(records) == 0:
        raise DataError(f"{where} is empty; {what} needs it")
    if not isinstance(records, ArraySource):
        return
    labels = np.asarray(records.array("label"))
    if labels.ndim == 2:
        if not multilabel:
            raise ConfigError(
                f"{where} has multi-label targets {labels.shape}, but the loss is multi-class "
                "(set loss.task_type=multilabel)"
            )
        if labels.shape[1] != num_classes:
            raise DataError(
                f"{where} has {labels.shape[1]} classes per target, model.num_classes={num_classes}"
            )
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"{where} has labels {low}..{high}, out of range for model.num_classes={num_classes}"
        )
    if split == "train" and high + 1 < num_classes:
        raise DataError(
            f"{where} uses classes 0..{high} ({high + 1} classes), model.num_classes="
            f"{num_classes}; set model.num_classes={high + 1} or leave it unset"
        )
