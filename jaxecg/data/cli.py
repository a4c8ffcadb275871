"""``jaxecg preprocess``: a folder of ECG records + a labels CSV → an on-disk dataset.

Each CSV row names a record (relative to RECORDS_DIR, with or without suffix:
WFDB ``.hea``/``.dat``, ``.npy`` or ``.npz``) and its label. Records are read,
checked for the sampling rate (resampled to 500 Hz only with ``--resample``),
preprocessed exactly as the reference (:func:`~jaxecg.data.preprocess.preprocess_ecg`)
and streamed into ``OUT`` (see :mod:`jaxecg.data.dataset`). A record that cannot
be used is reported with its name and reason, listed in the manifest, and
skipped — never zero-filled.

``--format ptbxl`` reads a PTB-XL root instead (its database and statements CSVs; labels,
classes and folds as the PTB-XL benchmark builds them, see :mod:`jaxecg.data.ptbxl`), and
``--labels`` names the statement set.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import multiprocessing as mp
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from jaxecg.data import ptbxl
from jaxecg.data.dataset import SPLITS, DatasetWriter
from jaxecg.data.preprocess import FS, LEADS, LENGTH, preprocess_ecg
from jaxecg.data.readers import check_rate, read_record
from jaxecg.errors import DataError, UsageError, run_command
from jaxecg.interrupts import Interrupted, ignore_in_worker, stop_requests
from jaxecg.staging import StagedDirectory

_SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
_RECORD_SUFFIXES = (".hea", ".dat", ".npy", ".npz")


def _parse_channels(text: str | None) -> list[int] | None:
    """``"0-11"`` or ``"0,1,2"`` (mixable) → list of lead indices."""
    if text is None:
        return None
    channels: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            channels += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise UsageError(f"--channels: expected e.g. '0-11' or '0,1,2', got {text!r}") from None
    return channels


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxecg preprocess",
        description="Preprocess a folder of 12-lead ECG records into a train/val/test dataset.",
    )
    parser.add_argument("records_dir", metavar="RECORDS_DIR", type=Path)
    parser.add_argument(
        "--format",
        choices=("folder", "ptbxl"),
        default="folder",
        help="folder: RECORDS_DIR + a labels CSV (default); ptbxl: RECORDS_DIR is a PTB-XL root",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="CSV|SET",
        help="CSV with one row per record; with --format ptbxl the statement set, one of "
        f"{', '.join(ptbxl.STATEMENT_SETS)} (default: {ptbxl.DEFAULT_SET})",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output directory (must be new or empty; written under a temporary name and "
        "renamed into place when complete)",
    )
    parser.add_argument(
        "--record-column",
        default="record",
        help="CSV column with the record path (default: record)",
    )
    parser.add_argument(
        "--label-column",
        action="append",
        default=None,
        help="label column; one gives class labels (integers or names), "
        "several give a float target vector (default: label)",
    )
    parser.add_argument(
        "--split-column",
        default=None,
        help="CSV column with train/val/test per record; otherwise splits are drawn at random",
    )
    parser.add_argument("--val-frac", type=float, default=0.1)
    parser.add_argument("--test-frac", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument(
        "--channels", default=None, help="leads to keep, e.g. '0-11' for PTB's 15-signal records"
    )
    parser.add_argument(
        "--input-fs",
        type=float,
        default=None,
        help="sampling rate of .npy records (they store none)",
    )
    parser.add_argument(
        "--resample",
        action="store_true",
        help=f"resample records not at {FS} Hz (otherwise they are skipped)",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    return parser


def _read_rows(args: argparse.Namespace) -> tuple[list[dict[str, str]], list[str]]:
    if not args.records_dir.is_dir():
        raise UsageError(f"RECORDS_DIR {args.records_dir} is not a directory")
    if args.labels is None:
        raise UsageError("--labels CSV is required (one row per record)")
    if not args.labels.is_file():
        raise UsageError(f"--labels {args.labels} not found")
    with open(args.labels, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    label_columns = args.label_column or ["label"]
    needed = [args.record_column, *label_columns] + (
        [args.split_column] if args.split_column else []
    )
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UsageError(f"{args.labels}: missing column(s) {missing}; it has {columns}")
    if not rows:
        raise UsageError(f"{args.labels}: no rows")
    _check_rows(rows, args.record_column, label_columns, args.labels)
    return rows, label_columns


def _record_id(name: str) -> str:
    """A record's name without its file suffix: ``a.hea``, ``a.dat`` and ``a`` are one record."""
    path = Path(name.strip())
    return str(path.with_suffix("")) if path.suffix in _RECORD_SUFFIXES else str(path)


def _check_rows(
    rows: list[dict[str, str]], record_column: str, label_columns: list[str], csv_name: Path
) -> None:
    """Every row names a record once, with a non-empty label: anything else is ambiguous."""
    unnamed = [i + 2 for i, row in enumerate(rows) if not (row[record_column] or "").strip()]
    if unnamed:
        raise DataError(f"{csv_name}: empty {record_column!r} on line(s) {unnamed[:10]}")
    for column in label_columns:
        empty = [row[record_column].strip() for row in rows if not (row[column] or "").strip()]
        if empty:
            more = f" (and {len(empty) - 10} more)" if len(empty) > 10 else ""
            raise DataError(
                f"{csv_name}: empty label in column {column!r} for record(s) {empty[:10]}{more}"
            )
    seen: dict[str, tuple[str, ...]] = {}
    duplicates: list[str] = []
    for row in rows:
        record = _record_id(row[record_column])
        label = tuple(row[c].strip() for c in label_columns)
        if record not in seen:
            seen[record] = label
        elif seen[record] != label:
            raise DataError(
                f"{csv_name}: record {record!r} is listed twice with different labels "
                f"({', '.join(seen[record])} and {', '.join(label)})"
            )
        elif record not in duplicates:
            duplicates.append(record)
    if duplicates:
        raise DataError(f"{csv_name}: duplicate record id(s) {duplicates[:10]}; list each once")


def _labels(rows: list[dict[str, str]], columns: list[str], csv_name: Path):
    """Class indices (one column) or float vectors (several) plus the manifest's description."""
    if len(columns) > 1:
        try:
            values = np.asarray([[float(r[c]) for c in columns] for r in rows], np.float32)
        except ValueError as err:
            raise DataError(
                f"{csv_name}: label columns {columns} must be numeric ({err})"
            ) from None
        return list(values), {"kind": "vector", "columns": columns}
    raw = [r[columns[0]].strip() for r in rows]
    if all(v.lstrip("-").isdigit() for v in raw):
        return [np.int32(v) for v in raw], {"kind": "class", "column": columns[0]}
    names = sorted(set(raw))
    index = {n: i for i, n in enumerate(names)}
    return [np.int32(index[v]) for v in raw], {
        "kind": "class",
        "column": columns[0],
        "names": names,
    }


def _splits(rows: list[dict[str, str]], args: argparse.Namespace) -> list[str]:
    if args.split_column:
        out = []
        for row in rows:
            value = row[args.split_column].strip().lower()
            if value not in _SPLIT_ALIASES:
                raise UsageError(
                    f"{args.labels}: split {value!r} for {row[args.record_column]!r} is not one "
                    f"of {sorted(_SPLIT_ALIASES)}"
                )
            out.append(_SPLIT_ALIASES[value])
        return out
    if not (0 <= args.val_frac and 0 <= args.test_frac and args.val_frac + args.test_frac < 1):
        raise UsageError("--val-frac and --test-frac must be >= 0 and sum to < 1")
    n = len(rows)
    order = np.random.default_rng(args.seed).permutation(n)
    n_val, n_test = round(n * args.val_frac), round(n * args.test_frac)
    split = np.full(n, "train", dtype=object)
    split[order[:n_val]] = "val"
    split[order[n_val : n_val + n_test]] = "test"
    return list(split)


def _resolve(records_dir: Path, name: str) -> Path | None:
    direct = records_dir / name
    if direct.suffix in (".npy", ".npz", ".hea") and direct.is_file():
        return direct
    if direct.suffix == ".dat" and direct.with_suffix(".hea").is_file():
        return direct.with_suffix(".hea")
    for suffix in (".hea", ".npz", ".npy"):
        candidate = records_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What to write: per record its id, file, split and label; and the manifest's fields."""

    names: list[str]
    paths: list[Path | None]
    splits: list[str]
    labels: list[Any]
    label_shape: tuple[int, ...]
    metadata: dict[str, Any]


def _folder_plan(args: argparse.Namespace) -> _Plan:
    rows, label_columns = _read_rows(args)
    labels, label_info = _labels(rows, label_columns, args.labels)
    names = [row[args.record_column].strip() for row in rows]
    return _Plan(
        names=names,
        paths=[_resolve(args.records_dir, name) for name in names],
        splits=_splits(rows, args),
        labels=labels,
        label_shape=() if label_info["kind"] == "class" else (len(label_columns),),
        metadata={
            "label": label_info,
            "source": {
                "records_dir": str(args.records_dir),
                "labels": str(args.labels),
                "resampled": args.resample,
                "split_seed": None if args.split_column else args.seed,
            },
        },
    )


def _ptbxl_plan(args: argparse.Namespace) -> _Plan:
    if args.label_column or args.split_column:
        raise UsageError("--label-column and --split-column do not apply to --format ptbxl")
    statement_set = ptbxl.DEFAULT_SET if args.labels is None else str(args.labels)
    found = ptbxl.read_ptbxl(args.records_dir, statement_set)
    return _Plan(
        names=found.ecg_ids,
        paths=[_resolve(args.records_dir, name) for name in found.filenames],
        splits=found.splits,
        labels=list(found.targets),
        label_shape=(len(found.classes),),
        metadata={
            "label": {"kind": "vector", "columns": found.classes, "statements": statement_set},
            "classes": found.classes,
            "source": {
                "ptbxl_root": str(args.records_dir),
                "statements": statement_set,
                "folds": {"train": "1-8", "val": ptbxl.VAL_FOLD, "test": ptbxl.TEST_FOLD},
                "resampled": args.resample,
            },
            "dropped_no_label": {"count": len(found.dropped), "ecg_ids": found.dropped},
        },
    )


def process_record(
    path: Path | None,
    *,
    channels: Sequence[int] | None,
    input_fs: float | None,
    resample: bool,
) -> np.ndarray:
    """Read and preprocess one record to ``(12, 5000)`` float32; ``ValueError`` says why not."""
    if path is None:
        raise DataError("record file not found (.hea, .npz or .npy)")
    signal, fs = read_record(
        path, fs=input_fs, target_fs=FS if resample else None, channels=channels
    )
    check_rate(fs, FS, name=path.name)
    if signal.shape[0] != LEADS:
        raise DataError(
            f"{signal.shape[0]} leads, expected {LEADS}"
            + ("" if channels else "; select them with --channels, e.g. --channels 0-11")
        )
    if np.isnan(signal[:, :LENGTH]).all():
        # The preprocessing would turn it into zeros: a flat line, not a record.
        raise DataError(f"every sample of the first {LENGTH} is NaN (no signal)")
    return preprocess_ecg(signal, fs=FS)


def _job(task: tuple[Path | None, dict[str, Any]]) -> tuple[np.ndarray | None, str | None]:
    path, options = task
    try:
        return process_record(path, **options), None
    except Exception as err:  # noqa: BLE001 -- every failure is reported, the record skipped
        return None, f"{type(err).__name__}: {err}"


def _run(tasks: list, workers: int) -> Iterator[tuple[np.ndarray | None, str | None]]:
    if workers <= 1:
        return map(_job, tasks)
    # spawn, not fork: the parent has imported JAX, whose threads make fork unsafe.
    executor = ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context("spawn"), initializer=ignore_in_worker
    )
    return _shutdown_after(executor.map(_job, tasks, chunksize=4), executor)


def _shutdown_after(results: Iterable, executor: ProcessPoolExecutor) -> Iterator:
    try:
        yield from results
    finally:  # a stop leaves the queued records undone
        executor.shutdown(cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``jaxecg preprocess``; returns the exit status."""
    args = _build_parser().parse_args(argv)
    return run_command("preprocess", lambda: _preprocess(args))


def _preprocess(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    channels = _parse_channels(args.channels)
    plan = _ptbxl_plan(args) if args.format == "ptbxl" else _folder_plan(args)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UsageError(f"--out {args.out} exists and is not an empty directory")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")

    options = {"channels": channels, "input_fs": args.input_fs, "resample": args.resample}
    tasks = [(path, options) for path in plan.paths]
    # Written under a temporary name: a failed or killed run leaves nothing at --out.
    with StagedDirectory(args.out) as stage:
        writer = DatasetWriter(
            stage.path,
            {s: plan.splits.count(s) for s in SPLITS},
            leads=LEADS,
            length=LENGTH,
            label_shape=plan.label_shape,
        )
        skipped = []
        with stop_requests() as stop:
            results = _run(tasks, args.workers)
            for done, (name, split, label, (ecg, error)) in enumerate(
                tqdm(
                    zip(plan.names, plan.splits, plan.labels, results),
                    total=len(plan.names),
                    desc="preprocess",
                    unit="record",
                    file=sys.stderr,
                ),
                start=1,
            ):
                if error is not None:
                    tqdm.write(f"skipped {name}: {error}", file=sys.stderr)
                    skipped.append({"record": name, "reason": error})
                else:
                    writer.append(split, name, ecg, label)
                if stop.requested and done < len(plan.names):
                    raise Interrupted(
                        f"stopped by {stop.name} after {done} of {len(plan.names)} records; "
                        f"nothing written to {args.out} (run the command again)",
                        stop.signum,
                    )
        manifest = writer.finish(
            {
                "fs": FS,
                **plan.metadata,
                "preprocessing": "reference (truncate 5000, NaN->0, clip 4 std, ALS baseline "
                "lam=1e7 p=0.3 niter=5, group-wise normalisation [0:3],[3:6],[6:12])",
                "skipped": skipped,
            }
        )
        counts = ", ".join(f"{s} {manifest['splits'][s]['count']}" for s in SPLITS)
        written = sum(manifest["splits"][s]["count"] for s in SPLITS)
        if written == 0:
            print(f"wrote no records; skipped {len(skipped)}")
            print("jaxecg preprocess: error: no record could be preprocessed", file=sys.stderr)
            return 1
        stage.commit()
    dropped = manifest.get("dropped_no_label")
    note = f"; dropped {dropped['count']} with no label in the set" if dropped else ""
    print(f"wrote {written} records ({counts}) to {args.out}; skipped {len(skipped)}{note}")
    return 0
