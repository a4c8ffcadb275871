"""``jaxecg probe ENCODER DATA --out DIR``: the linear probe, the standard test of a frozen encoder.

The encoder's features of the train, val and test records (:class:`jaxecg.embed.BatchedFeatures`)
are standardised with statistics of the train split, then a logistic regression
(scikit-learn; one binary regression per class for multi-label targets, one multinomial
regression for class ids) is fitted on train for each inverse regularisation ``C`` of a
small grid. The ``C`` with the best validation macro AUROC is kept and its model scores the
test split: ``DIR/probe.json`` holds the test ``metrics`` in the schema of ``jaxecg evaluate``
(:func:`jaxecg.scoring.classification_report`), the chosen ``C`` and every ``C``'s val AUROC;
a score the split cannot define (a class without positives or negatives) is ``null``.

``ENCODER`` is anything :func:`jaxecg.encoders.load_encoder` reads, or a preset name (random
weights: the baseline a pretrained encoder must beat). ``DATA`` is a ``jaxecg preprocess``
directory (its train/val/test splits) or a built-in synthetic set, whose three splits are
drawn with seeds ``--data-seed``, ``+1`` and ``+2``. Nothing here imports the training stack.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from jaxecg.embed import (
    BUILTIN,
    BatchedFeatures,
    Records,
    add_encoder_arguments,
    describe_encoder,
    encoder_from_args,
    open_data,
    write_atomic,
)
from jaxecg.errors import DataError, UsageError, run_command
from jaxecg.scoring import (
    BOOTSTRAP_SAMPLES,
    classification_metrics,
    classification_report,
    json_safe,
)

FORMAT = "jaxecg.probe"
VERSION = 1
RESULT = "probe.json"
SPLITS = ("train", "val", "test")
# Inverse L2 strengths tried on val; standardised features put the useful range around 1.
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
MAX_ITER = 2000


# ---------------------------------------------------------------------------- data


def split_records(
    data: str, *, num_train: int = 256, num_eval: int = 128, seed: int = 0
) -> dict[str, Records]:
    """The train/val/test records of ``data`` (a dataset directory or a built-in set)."""
    if data in BUILTIN:
        sizes = {"train": num_train, "val": num_eval, "test": num_eval}
        return {
            split: open_data(data, num_records=sizes[split], seed=seed + i)
            for i, split in enumerate(SPLITS)
        }
    return {split: open_data(data, splits=[split]) for split in SPLITS}


def class_names(data: str, modality: str, num_classes: int) -> list[str]:
    """Names of the label columns/ids: the dataset's own, else ``"0"``, ``"1"``, ..."""
    from jaxecg.data import CMR_CLASSES, ECG_CLASSES, read_manifest

    if data in BUILTIN:
        return list(ECG_CLASSES if modality == "ecg" else CMR_CLASSES)
    manifest = read_manifest(data)
    label = manifest.get("label", {})
    names = manifest.get("classes") or label.get("names") or label.get("columns")
    return list(names) if names else [str(c) for c in range(num_classes)]


def _labels(values: list[Any], split: str) -> tuple[np.ndarray, bool]:
    """``(labels, multilabel)``: ``(N,)`` class ids, or ``(N, C)`` 0/1 targets."""
    labels = np.stack([np.asarray(v) for v in values])
    if labels.ndim == 1:
        if labels.min() < 0:
            raise DataError(f"{split} split: negative class id {int(labels.min())}")
        return labels.astype(np.int64), False
    if not np.isin(labels, (0, 1)).all():
        raise DataError(
            f"{split} split: target vectors must be 0/1 (multi-hot) for a probe, found "
            f"{sorted(set(np.unique(labels).tolist()) - {0.0, 1.0})[:5]}"
        )
    return labels.astype(np.int64), True


# ---------------------------------------------------------------------------- the regression


def _regression(c: float, multilabel: bool) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    model = LogisticRegression(C=c, max_iter=MAX_ITER)
    return OneVsRestClassifier(model) if multilabel else model


def _logits(model: Any, x: np.ndarray, num_classes: int, multilabel: bool) -> np.ndarray:
    """``(N, C)`` scores whose sigmoid (multi-label) or softmax (classes) are the model's
    probabilities; a class the train split never showed gets probability 0."""
    if multilabel:
        return np.asarray(model.decision_function(x), np.float64).reshape(len(x), num_classes)
    logits = np.full((len(x), num_classes), -np.inf)
    logits[:, model.classes_] = model.predict_log_proba(x)
    return logits


def fit_probe(
    features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    *,
    num_classes: int,
    multilabel: bool,
    c_grid: tuple[float, ...] = C_GRID,
) -> tuple[np.ndarray, float, dict[str, float]]:
    """Fit on train for each ``C``, keep the best val macro AUROC; returns
    ``(test logits, chosen C, {C: val AUROC})``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features["train"])
    x = {split: scaler.transform(f) for split, f in features.items()}
    best, chosen, best_auroc, val_auroc = None, c_grid[0], -np.inf, {}
    for c in c_grid:
        with warnings.catch_warnings():
            # A class constant on train gets a constant score (AUROC 0.5), as it should.
            warnings.filterwarnings("ignore", message="Label not .* is present in all")
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            model = _regression(c, multilabel).fit(x["train"], labels["train"])
        logits = _logits(model, x["val"], num_classes, multilabel)
        auroc = classification_metrics(logits, labels["val"], multilabel=multilabel)["auroc"]
        val_auroc[f"{c:g}"] = auroc
        if np.isfinite(auroc) and auroc > best_auroc:
            best, best_auroc, chosen = model, auroc, c
    if best is None:
        raise DataError(
            "the val split cannot choose C: no class has both positive and negative records"
        )
    return _logits(best, x["test"], num_classes, multilabel), chosen, val_auroc


# ---------------------------------------------------------------------------- the run


def _features(
    extract: BatchedFeatures, records: Records, desc: str, progress: bool
) -> tuple[np.ndarray, list[Any]]:
    """``((N, D) features, N labels)`` of every record, with a progress bar."""
    import tqdm

    rows, labels = [], []
    with tqdm.tqdm(
        total=len(records),
        unit="record",
        desc=desc,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        for batch_features, batch_labels in extract.batches(records, 0, len(records)):
            rows.append(batch_features)
            labels += batch_labels
            bar.update(len(batch_labels))
    return np.concatenate(rows), labels


def check_out(out: Path) -> None:
    """A finished probe's result is never overwritten."""
    if (out / RESULT).exists():
        raise UsageError(f"--out {out} already holds {RESULT}; choose a new directory")


def probe(
    encoder: Any,
    data: str,
    out: str | Path,
    *,
    num_train: int = 256,
    num_eval: int = 128,
    data_seed: int = 0,
    batch_size: int | None = None,
    c_grid: tuple[float, ...] = C_GRID,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the linear probe of ``encoder`` on ``data`` and write ``out/probe.json``;
    returns its content."""
    out = Path(out)
    check_out(out)
    if not c_grid or min(c_grid) <= 0:
        raise UsageError(f"--c values must be positive, got {list(c_grid)}")
    records = split_records(data, num_train=num_train, num_eval=num_eval, seed=data_seed)
    extract = BatchedFeatures(encoder, batch_size=batch_size)
    features, labels, kinds = {}, {}, set()
    for split, split_set in records.items():
        features[split], values = _features(extract, split_set, f"features {split}", progress)
        labels[split], multilabel = _labels(values, split)
        kinds.add(multilabel)
    if len(kinds) != 1:
        raise DataError(f"{data}: splits mix class ids and target vectors")
    num_classes = (
        labels["train"].shape[1] if multilabel else int(max(labels[s].max() for s in SPLITS)) + 1
    )
    classes = class_names(data, encoder.kind, num_classes)
    if len(classes) < num_classes or (multilabel and len(classes) != num_classes):
        raise DataError(f"{data}: labels have {num_classes} classes, its names are {classes}")
    logits, chosen, val_auroc = fit_probe(
        features, labels, num_classes=len(classes), multilabel=multilabel, c_grid=c_grid
    )
    result = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": describe_encoder(encoder),
        "data": {split: r.description for split, r in records.items()},
        "splits": {split: len(r) for split, r in records.items()},
        "split": "test",
        "num_records": len(records["test"]),
        "classes": classes,
        "multilabel": multilabel,
        "feature_dim": int(features["train"].shape[1]),
        "regularization": {"chosen_C": chosen, "val_auroc_macro": val_auroc},
        "metrics": classification_report(
            logits,
            labels["test"],
            classes,
            multilabel=multilabel,
            bootstrap_samples=bootstrap_samples,
        ),
    }
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n"
    write_atomic(out / RESULT, lambda f: f.write(text.encode()))
    return result


def _print_summary(result: dict[str, Any], out: Path) -> None:
    metrics, chosen = result["metrics"], result["regularization"]["chosen_C"]
    lo, hi = metrics["auroc_macro_ci95"]
    print(
        f"linear probe, test split ({result['num_records']} records), C={chosen:g}: "
        f"AUROC {metrics['auroc_macro']:.3f} [{lo:.3f}, {hi:.3f}]  "
        f"AUPRC {metrics['auprc_macro']:.3f}  F1 {metrics['f1_macro']:.3f}  "
        f"accuracy {metrics['accuracy']:.3f}"
    )
    width = max(len(name) for name in metrics["per_class"])
    for name, scores in metrics["per_class"].items():
        print(
            f"  {name:<{width}}  AUROC {scores['auroc']:.3f}  AUPRC {scores['auprc']:.3f}  "
            f"F1 {scores['f1']:.3f}  support {scores['support']}"
        )
    print(f"wrote {out / RESULT}")


# ---------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxecg probe",
        description="Linear probe of a frozen encoder: logistic regression on its features "
        "(C chosen on val), test metrics in DIR/probe.json.",
    )
    add_encoder_arguments(parser, "ENCODER")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    parser.add_argument(
        "--num-records", type=int, default=256, help="train records of a built-in dataset"
    )
    parser.add_argument(
        "--num-eval", type=int, default=128, help="val and test records of a built-in dataset"
    )
    parser.add_argument("--data-seed", type=int, default=0, help="seed of a built-in dataset")
    parser.add_argument("--batch-size", type=int, help="global batch (default: 8 per device)")
    parser.add_argument(
        "--c",
        type=float,
        action="append",
        metavar="C",
        help=f"inverse regularisation to try (repeatable; default {' '.join(map(str, C_GRID))})",
    )
    parser.add_argument(
        "--bootstrap-samples",
        type=int,
        default=BOOTSTRAP_SAMPLES,
        help="resamples of the test AUROC's 95%% interval",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``jaxecg probe``; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        check_out(args.out)  # before the encoder is loaded
        result = probe(
            encoder_from_args(args),
            args.data,
            args.out,
            num_train=args.num_records,
            num_eval=args.num_eval,
            data_seed=args.data_seed,
            batch_size=args.batch_size,
            c_grid=tuple(args.c) if args.c else C_GRID,
            bootstrap_samples=args.bootstrap_samples,
            progress=not args.no_progress,
        )
        _print_summary(result, args.out)
        return 0

    return run_command("probe", body)
