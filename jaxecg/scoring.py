"""Classification scores from logits, with scikit-learn: one place for validation, evaluate, probe.

``logits`` are ``(N, C)``; ``labels`` are ``(N,)`` class ids (multiclass, softmax) or
``(N, C)`` 0/1 (multilabel, one sigmoid per class). Scores of a class are computed only
where the split has both positives and negatives of it (else NaN), so a tiny split
reports what it can instead of failing a run.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.stats
from sklearn import metrics as skm

# Bootstrap resamples behind ``auroc_macro_ci95`` (the PTB-XL benchmark's procedure).
BOOTSTRAP_SAMPLES = 1000


def probabilities(logits: np.ndarray, *, multilabel: bool) -> np.ndarray:
    """Per-class probabilities: sigmoid per label (multilabel) or softmax over classes."""
    logits = np.asarray(logits, np.float64)
    if multilabel:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def one_hot_truth(labels: np.ndarray, num_classes: int, *, multilabel: bool) -> np.ndarray:
    """``(N, C)`` 0/1 targets of either label layout."""
    labels = np.asarray(labels)
    if multilabel:
        return labels.astype(np.int64)
    return np.eye(num_classes, dtype=np.int64)[labels.astype(np.int64)]


def _scored_classes(truth: np.ndarray) -> list[int]:
    return [c for c in range(truth.shape[1]) if 0 < truth[:, c].sum() < len(truth)]


def _macro_auroc(truth: np.ndarray, probs: np.ndarray) -> float:
    scored = _scored_classes(truth)
    if not scored:
        return float("nan")
    return float(np.mean([skm.roc_auc_score(truth[:, c], probs[:, c]) for c in scored]))


def _predictions(probs: np.ndarray, *, multilabel: bool) -> np.ndarray:
    """Hard predictions: 0/1 at 0.5 per label (multilabel) or the arg-max class id."""
    return (probs >= 0.5).astype(np.int64) if multilabel else probs.argmax(axis=1)


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, *, multilabel: bool
) -> dict[str, float]:
    """AUROC (macro), F1 (macro) and accuracy (macro, as the reference's torchmetrics).

    Multiclass accuracy is the mean per-class recall (torchmetrics' macro accuracy),
    multilabel accuracy the mean per-label accuracy at 0.5. These are the training
    run's validation metrics.
    """
    num_classes = np.shape(logits)[1]
    probs = probabilities(logits, multilabel=multilabel)
    truth = one_hot_truth(labels, num_classes, multilabel=multilabel)
    preds = _predictions(probs, multilabel=multilabel)
    if multilabel:
        accuracy = float(np.mean(preds == truth))
        f1 = skm.f1_score(truth, preds, average="macro", zero_division=0)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # classes absent from a small split
            accuracy = float(skm.balanced_accuracy_score(labels, preds))
        f1 = skm.f1_score(
            labels, preds, labels=range(num_classes), average="macro", zero_division=0
        )
    return {"auroc": _macro_auroc(truth, probs), "f1": float(f1), "accuracy": accuracy}


def rank_auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``scores`` ``(S, n)`` against 0/1 ``labels`` ``(S, n)``.

    The Mann-Whitney form (average ranks, so ties count one half), equal to scikit-learn's
    ``roc_auc_score`` per row but vectorised: the bootstrap needs thousands of them.
    Every row must hold both classes.
    """
    ranks = scipy.stats.rankdata(scores, axis=1)
    positives = labels.sum(axis=1)
    negatives = labels.shape[1] - positives
    rank_sum = (ranks * labels).sum(axis=1)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def bootstrap_auroc_ci(
    truth: np.ndarray,
    probs: np.ndarray,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> list[float]:
    """95 % interval ``[lo, hi]`` of the macro AUROC over records resampled with replacement.

    As the PTB-XL benchmark does, a resample is kept only if every class that the whole
    split can score still has positives and negatives in it, so each resample averages
    over the same classes as the point estimate. (The benchmark's tables quote the 5-95 %
    quantiles of 100 resamples; the key here says 95 %, so it is 2.5-97.5 % of ``samples``.)
    """
    scored = _scored_classes(truth)
    if not scored:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    n = len(truth)
    values: list[np.ndarray] = []
    kept = 0
    for _ in range(100):  # bounded: a split this degenerate is reported as NaN
        rows = rng.integers(0, n, (samples, n))
        positives = truth[:, scored][rows].sum(axis=1)  # (samples, classes)
        rows = rows[np.all((positives > 0) & (positives < n), axis=1)][: samples - kept]
        if len(rows):
            per_class = [rank_auroc(probs[rows, c], truth[rows, c]) for c in scored]
            values.append(np.mean(per_class, axis=0))
            kept += len(rows)
        if kept == samples:
            lo, hi = np.percentile(np.concatenate(values), [2.5, 97.5])
            return [float(lo), float(hi)]
    return [float("nan"), float("nan")]


def classification_report(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    multilabel: bool,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``metrics`` block of ``jaxecg evaluate`` and ``jaxecg probe`` JSON.

    ``{"auroc_macro", "auprc_macro", "f1_macro", "accuracy", "auroc_macro_ci95",
    "per_class": {name: {"auroc", "auprc", "f1", "support"}}}``; ``support`` is the
    number of positive records of the class, ``accuracy`` as in
    :func:`classification_metrics`.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise ValueError(
            f"logits {logits.shape} do not match {len(classes)} classes {list(classes)}"
        )
    probs = probabilities(logits, multilabel=multilabel)
    truth = one_hot_truth(labels, len(classes), multilabel=multilabel)
    preds = one_hot_truth(
        _predictions(probs, multilabel=multilabel), len(classes), multilabel=multilabel
    )
    scored = set(_scored_classes(truth))
    per_class: dict[str, dict[str, float | int]] = {}
    for c, name in enumerate(classes):
        auroc = auprc = float("nan")
        if c in scored:
            auroc = float(skm.roc_auc_score(truth[:, c], probs[:, c]))
            auprc = float(skm.average_precision_score(truth[:, c], probs[:, c]))
        per_class[name] = {
            "auroc": auroc,
            "auprc": auprc,
            "f1": float(skm.f1_score(truth[:, c], preds[:, c], zero_division=0)),
            "support": int(truth[:, c].sum()),
        }
    summary = classification_metrics(logits, labels, multilabel=multilabel)
    auprcs = [per_class[name]["auprc"] for c, name in enumerate(classes) if c in scored]
    return {
        "auroc_macro": summary["auroc"],
        "auprc_macro": float(np.mean(auprcs)) if auprcs else float("nan"),
        "f1_macro": summary["f1"],
        "accuracy": summary["accuracy"],
        "auroc_macro_ci95": bootstrap_auroc_ci(truth, probs, samples=bootstrap_samples, seed=seed),
        "per_class": per_class,
    }


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as ``None``: reports stay strict JSON (``null``
    where a split cannot define a score)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
