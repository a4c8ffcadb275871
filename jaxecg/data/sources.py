"""Random-access record sources for the loader (grain's ``RandomAccessDataSource`` protocol).

A source has ``len(source)`` and ``source[i] -> dict`` of per-record numpy
arrays. Record layouts used across jaxecg:

- ECG: ``{"ecg": (12, T) float32, "label": int32 scalar or (K,) float32}``;
- CMR: ``{"image": (H, W, 3) float32 in [0, 1], "label": int32 scalar}``;
- record positions: ``{"index": int32 scalar}`` (:class:`IndexSource`, the index stream
  of a split that is held on the devices, ``data.on_device``).

``record_name(i)`` gives a human-readable name for error messages, so a bad
record is reported by name rather than by a stack trace from ``np.stack``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxecg.data.synthetic import (
    CMR_CLASSES,
    ECG_CLASSES,
    synthetic_cmr_record,
    synthetic_ecg_record,
)


class ArraySource:
    """Records are rows of equally long arrays: ``source[i] = {k: arrays[k][i]}``.

    Arrays may be numpy memmaps (the on-disk dataset), so nothing is read until
    a record is requested. ``names`` (optional) are record ids for messages.
    """

    def __init__(self, arrays: Mapping[str, Any], *, names: Sequence[str] | None = None):
        if not arrays:
            raise ValueError("ArraySource needs at least one array")
        lengths = {key: len(value) for key, value in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"ArraySource arrays differ in length: {lengths}")
        self._arrays = dict(arrays)
        self._length = next(iter(lengths.values()))
        if names is not None and len(names) != self._length:
            raise ValueError(f"{len(names)} record names for {self._length} records")
        self._names = None if names is None else list(names)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {key: np.asarray(value[index]) for key, value in self._arrays.items()}

    def array(self, key: str) -> Any:
        """The whole array of ``key`` over all records (memory-mapped if the source is)."""
        return self._arrays[key]

    def record_name(self, index: int) -> str:
        """The record's id if names were given, else ``"record <index>"``."""
        return self._names[index] if self._names is not None else f"record {index}"

    def __repr__(self) -> str:
        shapes = {k: tuple(np.shape(v)) for k, v in self._arrays.items()}
        return f"ArraySource({shapes})"


class _LazySource(abc.ABC):
    """``num_records`` records generated on demand by ``self._make(index)``."""

    kind = "record"

    def __init__(self, num_records: int, seed: int):
        if num_records <= 0:
            raise ValueError(f"num_records must be positive, got {num_records}")
        self.num_records, self.seed = num_records, seed

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} out of range for {self.num_records} records")
        return self._make(index)

    @abc.abstractmethod
    def _make(self, index: int) -> dict[str, np.ndarray]:
        """Record ``index`` (already range-checked)."""

    def record_name(self, index: int) -> str:
        return f"synthetic {self.kind} {index} (seed {self.seed})"


class SyntheticECGSource(_LazySource):
    """Lazily generated synthetic ECGs (see :mod:`jaxecg.data.synthetic`).

    Records ``{"ecg": (12, length) float32, "label": int32}``; record ``i`` depends
    only on ``(seed, i)``.
    """

    kind = "ECG"

    def __init__(
        self,
        num_records: int,
        *,
        seed: int = 0,
        length: int = 5000,
        num_classes: int = len(ECG_CLASSES),
        raw: bool = False,
    ):
        super().__init__(num_records, seed)
        self.length, self.num_classes, self.raw = length, num_classes, raw

    def _make(self, index: int) -> dict[str, np.ndarray]:
        ecg, label = synthetic_ecg_record(
            index, seed=self.seed, length=self.length, num_classes=self.num_classes, raw=self.raw
        )
        return {"ecg": ecg, "label": np.int32(label)}


class SyntheticCMRSource(_LazySource):
    """Lazily generated CMR-like frames: ``{"image": (size, size, 3) float32, "label": int32}``."""

    kind = "CMR"

    def __init__(
        self,
        num_records: int,
        *,
        seed: int = 0,
        size: int = 210,
        num_classes: int = len(CMR_CLASSES),
    ):
        super().__init__(num_records, seed)
        self.size, self.num_classes = size, num_classes

    def _make(self, index: int) -> dict[str, np.ndarray]:
        image, label = synthetic_cmr_record(
            index, seed=self.seed, size=self.size, num_classes=self.num_classes
        )
        return {"image": image, "label": np.int32(label)}


class IndexSource:
    """Records ``{"index": i}`` for ``i < num_records``: a split's positions, not its data.

    :func:`~jaxecg.data.pipeline.make_loader` over it, with the seed and shard settings of
    the split's own loader, yields exactly that loader's record order (the shuffle and the
    shards depend only on the record count and those settings) and the same resumable
    state, so a split held on the devices is read in the order the grain path reads it.
    """

    def __init__(self, num_records: int):
        if num_records <= 0:
            raise ValueError(f"num_records must be positive, got {num_records}")
        self.num_records = num_records

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} out of range for {self.num_records} records")
        return {"index": np.int32(index)}
