"""PTB-XL's own layout → the records, multi-hot targets and splits of ``jaxecg preprocess``.

A PTB-XL root holds ``ptbxl_database.csv`` (one row per ECG: ``ecg_id``, ``scp_codes`` — a
Python dict literal of SCP code → likelihood —, ``strat_fold``, ``filename_hr``) and
``scp_statements.csv`` (one row per SCP code, its first column the code, with the flags
``diagnostic``/``form``/``rhythm`` and ``diagnostic_class``/``diagnostic_subclass``), beside
the 500 Hz WFDB records ``filename_hr`` names.

Labels follow the PTB-XL benchmark (helme/ecg_ptbxl_benchmarking,
``utils.compute_label_aggregations`` then ``select_data`` with its default
``min_samples=0``), so numbers are comparable with the papers that use it:

- every code of ``scp_codes`` counts, whatever its likelihood (a code listed with
  likelihood 0 is a label, as in the benchmark, which reads only the keys);
- ``diagnostic``: the code itself if its statement has ``diagnostic == 1``;
  ``subdiagnostic``/``superdiagnostic``: that statement's ``diagnostic_subclass`` /
  ``diagnostic_class`` (skipped where empty); ``form``/``rhythm``: the code if its
  statement has that flag; ``all``: every code;
- the classes are the labels that occur in the whole database, in sorted order (the
  benchmark's ``MultiLabelBinarizer``): for ``superdiagnostic`` CD, HYP, MI, NORM, STTC;
- a record with no label in the set is dropped; folds 1–8 are train, 9 val, 10 test
  (the benchmark's recommended split).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
from pathlib import Path

import numpy as np

from jaxecg.errors import DataError

DATABASE = "ptbxl_database.csv"
STATEMENTS = "scp_statements.csv"
STATEMENT_SETS = ("superdiagnostic", "diagnostic", "subdiagnostic", "form", "rhythm", "all")
DEFAULT_SET = "superdiagnostic"
VAL_FOLD, TEST_FOLD = 9, 10
NUM_FOLDS = 10

# Which statement flag selects the codes of a set, and which column names their label
# (None: the code itself).
_SELECTION: dict[str, tuple[str | None, str | None]] = {
    "superdiagnostic": ("diagnostic", "diagnostic_class"),
    "subdiagnostic": ("diagnostic", "diagnostic_subclass"),
    "diagnostic": ("diagnostic", None),
    "form": ("form", None),
    "rhythm": ("rhythm", None),
    "all": (None, None),
}
_DATABASE_COLUMNS = ("ecg_id", "scp_codes", "strat_fold", "filename_hr")


@dataclasses.dataclass(frozen=True)
class PTBXLLabels:
    """The records that keep a label, in database order, and what was dropped.

    ``targets[i]`` is the ``(len(classes),)`` float32 multi-hot row of ``ecg_ids[i]``,
    ``filenames[i]`` its record path relative to the root (no suffix), ``splits[i]``
    its split by fold. ``dropped`` lists the ``ecg_id``\\ s without a label in the set.
    """

    statement_set: str
    classes: list[str]
    ecg_ids: list[str]
    filenames: list[str]
    splits: list[str]
    targets: np.ndarray
    dropped: list[str]


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise DataError(f"{path.parent} is not a PTB-XL root: no {path.name}")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DataError(f"{path}: empty file")
    return rows[0], rows[1:]


def _is_na(value: str) -> bool:
    """pandas' reading of an empty cell (what the benchmark's ``str(c) != 'nan'`` skips)."""
    return value.strip().lower() in ("", "nan")


def _flag(value: str, *, path: Path, code: str, column: str) -> bool:
    """A statement flag as pandas reads it: ``1``/``1.0`` set; empty, ``0`` not."""
    if _is_na(value):
        return False
    try:
        return float(value) == 1.0
    except ValueError:
        raise DataError(f"{path}: {column}={value!r} of {code!r} is not a number") from None


def statement_labels(root: Path, statement_set: str) -> dict[str, str] | None:
    """SCP code → its label in ``statement_set`` (codes outside the set are absent);
    ``None`` for ``all``, where every code is its own label."""
    if statement_set not in STATEMENT_SETS:
        raise DataError(f"unknown PTB-XL statement set {statement_set!r}; one of {STATEMENT_SETS}")
    flag, label_column = _SELECTION[statement_set]
    if flag is None:
        return None
    path = root / STATEMENTS
    header, rows = _read_csv(path)
    needed = [flag] + ([label_column] if label_column else [])
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {header}")
    at = {name: header.index(name) for name in needed}
    labels = {}
    for row in rows:
        code = row[0].strip()
        if not _flag(row[at[flag]], path=path, code=code, column=flag):
            continue
        label = code if label_column is None else row[at[label_column]].strip()
        if not _is_na(label):
            labels[code] = label
    return labels


def _scp_codes(text: str, *, path: Path, ecg_id: str) -> dict:
    try:
        codes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        codes = None
    if not isinstance(codes, dict):
        raise DataError(f"{path}: scp_codes of ecg_id {ecg_id} is not a dict literal: {text!r}")
    return codes


def _split_of(fold_text: str, *, path: Path, ecg_id: str) -> str:
    try:
        fold = int(float(fold_text))
    except ValueError:
        fold = None
    if fold is None or not 1 <= fold <= NUM_FOLDS:
        raise DataError(
            f"{path}: strat_fold of ecg_id {ecg_id} is {fold_text!r}, expected 1..{NUM_FOLDS}"
        )
    return "test" if fold == TEST_FOLD else "val" if fold == VAL_FOLD else "train"


def read_ptbxl(root: str | Path, statement_set: str = DEFAULT_SET) -> PTBXLLabels:
    """The labelled records of a PTB-XL root for ``statement_set`` (see the module docstring).

    Reads only the two CSV files; the signals are read by ``jaxecg preprocess``.
    """
    from sklearn.preprocessing import MultiLabelBinarizer

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"PTB-XL root {root} is not a directory")
    labels_of = statement_labels(root, statement_set)
    path = root / DATABASE
    header, rows = _read_csv(path)
    missing = [c for c in _DATABASE_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {header}")
    at = {name: header.index(name) for name in _DATABASE_COLUMNS}
    kept: list[tuple[str, str, str, list[str]]] = []
    dropped: list[str] = []
    seen: set[str] = set()
    for row in rows:
        ecg_id = row[at["ecg_id"]].strip()
        if ecg_id in seen:
            raise DataError(f"{path}: ecg_id {ecg_id} is listed twice")
        seen.add(ecg_id)
        codes = _scp_codes(row[at["scp_codes"]], path=path, ecg_id=ecg_id)
        if labels_of is None:
            labels = sorted(set(codes))
        else:
            labels = sorted({labels_of[c] for c in codes if c in labels_of})
        split = _split_of(row[at["strat_fold"]], path=path, ecg_id=ecg_id)
        if labels:
            kept.append((ecg_id, row[at["filename_hr"]].strip(), split, labels))
        else:
            dropped.append(ecg_id)
    if not kept:
        raise DataError(f"{path}: no record has a label in the {statement_set!r} statements")
    binarizer = MultiLabelBinarizer()
    targets = binarizer.fit_transform([labels for *_, labels in kept]).astype(np.float32)
    return PTBXLLabels(
        statement_set=statement_set,
        classes=[str(c) for c in binarizer.classes_],
        ecg_ids=[ecg_id for ecg_id, *_ in kept],
        filenames=[filename for _, filename, *_ in kept],
        splits=[split for _, _, split, _ in kept],
        targets=targets,
        dropped=dropped,
    )
