"""The compact on-disk ECG dataset written by ``jaxecg preprocess``.

Layout of a dataset directory::

    manifest.json          format, version, fs, leads, length, label description,
                           preprocessing parameters, per-split files and counts,
                           skipped records with reasons
    <split>_ecg.npy        (N, leads, length) float32, preprocessed (C order)
    <split>_label.npy      (N,) int32 class indices, or (N, K) float32 targets
    <split>_ids.txt        N record ids, one per line, in array order

Splits are ``train``, ``val`` and ``test`` (any may be empty). Arrays are plain
``.npy`` so :func:`load_split` memory-maps them: opening a large dataset reads
nothing until records are requested.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxecg.data.sources import ArraySource
from jaxecg.errors import DataError

FORMAT = "jaxecg.ecg_dataset"
VERSION = 1
SPLITS = ("train", "val", "test")


class DatasetWriter:
    """Streams preprocessed records into a dataset directory (memory stays O(1) records).

    ``capacity`` is the most records each split can receive (known before
    preprocessing); skipped records leave the arrays shorter, which
    :meth:`finish` trims. ``label_shape`` is ``()`` for class indices (int32)
    or ``(K,)`` for float32 targets.
    """

    def __init__(
        self,
        out_dir: str | Path,
        capacity: dict[str, int],
        *,
        leads: int,
        length: int,
        label_shape: tuple[int, ...] = (),
    ):
        unknown = set(capacity) - set(SPLITS)
        if unknown:
            raise DataError(f"unknown split(s) {sorted(unknown)}; expected {SPLITS}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.leads, self.length, self.label_shape = leads, length, tuple(label_shape)
        self.label_dtype = np.dtype(np.int32 if not label_shape else np.float32)
        self._ecg: dict[str, np.memmap] = {}
        self._labels: dict[str, np.ndarray] = {}
        self._ids: dict[str, list[str]] = {}
        for split, cap in capacity.items():
            self._ecg[split] = np.lib.format.open_memmap(
                self._partial(split),
                mode="w+",
                dtype=np.float32,
                shape=(max(cap, 1), leads, length),
            )
            self._labels[split] = np.zeros((cap, *self.label_shape), self.label_dtype)
            self._ids[split] = []

    def _partial(self, split: str) -> Path:
        return self.out_dir / f"{split}_ecg.partial.npy"

    def append(self, split: str, record_id: str, ecg: np.ndarray, label: Any) -> None:
        """Add one preprocessed ``(leads, length)`` record with its label to ``split``."""
        if ecg.shape != (self.leads, self.length):
            raise DataError(f"{record_id}: expected ({self.leads}, {self.length}), got {ecg.shape}")
        row = len(self._ids[split])
        self._ecg[split][row] = ecg
        self._labels[split][row] = label
        self._ids[split].append(record_id)

    def finish(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Trim and rename the arrays, write ``manifest.json``; returns the manifest."""
        splits = {}
        for split, memmap in self._ecg.items():
            count = len(self._ids[split])
            memmap.flush()
            final = self.out_dir / f"{split}_ecg.npy"
            if count == memmap.shape[0]:
                del memmap
                os.replace(self._partial(split), final)
            elif count == 0:
                del memmap
                self._partial(split).unlink()
                np.save(final, np.zeros((0, self.leads, self.length), np.float32))
            else:
                trimmed = np.lib.format.open_memmap(
                    final, mode="w+", dtype=np.float32, shape=(count, self.leads, self.length)
                )
                trimmed[:] = memmap[:count]
                trimmed.flush()
                del trimmed, memmap
                self._partial(split).unlink()
            np.save(self.out_dir / f"{split}_label.npy", self._labels[split][:count])
            (self.out_dir / f"{split}_ids.txt").write_text(
                "".join(f"{rid}\n" for rid in self._ids[split])
            )
            splits[split] = {
                "count": count,
                "ecg": final.name,
                "label": f"{split}_label.npy",
                "ids": f"{split}_ids.txt",
            }
        self._ecg.clear()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "leads": self.leads,
            "length": self.length,
            "label_shape": list(self.label_shape),
            "label_dtype": self.label_dtype.name,
            **metadata,
            "splits": splits,
        }
        (self.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The dataset's ``manifest.json``; :class:`~jaxecg.errors.DataError` if missing or not ours."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{directory}: no manifest.json (not a jaxecg dataset directory)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('version')}, "
            f"expected {FORMAT!r} v{VERSION}"
        )
    return manifest


def load_split(directory: str | Path, split: str) -> ArraySource:
    """Memory-map one split as an :class:`ArraySource` of
    ``{"ecg": (leads, length) float32, "label": int32 | (K,) float32}`` records,
    named by their record ids. Array shapes are checked against the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        raise DataError(f"{directory}: no split {split!r}; has {sorted(manifest['splits'])}")
    entry = manifest["splits"][split]
    count = entry["count"]
    ecg = np.load(directory / entry["ecg"], mmap_mode="r")
    labels = np.load(directory / entry["label"], mmap_mode="r")
    ids = (directory / entry["ids"]).read_text().splitlines()
    expected = {
        entry["ecg"]: (ecg.shape, (count, manifest["leads"], manifest["length"])),
        entry["label"]: (labels.shape, (count, *manifest["label_shape"])),
        entry["ids"]: ((len(ids),), (count,)),
    }
    for name, (got, want) in expected.items():
        if tuple(got) != tuple(want):
            raise DataError(f"{directory / name}: shape {tuple(got)}, manifest says {want}")
    return ArraySource({"ecg": ecg, "label": labels}, names=ids)
