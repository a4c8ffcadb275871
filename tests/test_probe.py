"""``jaxecg probe``: a linear probe separates classes the features carry, and only those.

Runs go through :func:`jaxecg.probe.main` in-process with a tiny random-init ViT (a preset
plus ``--set`` overrides) over the 4 forced host devices, on datasets written here: two
independent labels per record (multi-label), each switching on its own pattern in the signal.
"""

from __future__ import annotations

import json

import numpy as np

from jaxecg.data import DatasetWriter
from jaxecg.probe import RESULT, fit_probe, main

TINY_ECG = {"img_size": [1, 12, 500], "embed_dim": 32, "depth": 1, "num_heads": 2}
ARGS = [
    "pluto",
    "--kind",
    "ecg",
    *[f"--set={k}={v}" for k, v in TINY_ECG.items()],
    "--bootstrap-samples",
    "50",
    "--no-progress",
]
SIZES = {"train": 64, "val": 32, "test": 32}
CLASSES = ["sine", "offset"]
METRIC_KEYS = {"auroc_macro", "auprc_macro", "f1_macro", "accuracy", "auroc_macro_ci95"}


def _write(out, *, shuffle: bool) -> None:
    """Label ``sine`` adds a 5 Hz wave to leads 0-5, ``offset`` a step to leads 6-11; with
    ``shuffle`` the labels are permuted across records, so the signals no longer tell them."""
    rng = np.random.default_rng(0)
    t = np.arange(500) / 500
    writer = DatasetWriter(out, SIZES, leads=12, length=500, label_shape=(2,))
    for split, n in SIZES.items():
        targets = rng.integers(0, 2, (n, 2)).astype(np.float32)
        signals = rng.normal(0, 0.5, (n, 12, 500)).astype(np.float32)
        signals[:, :6] += 2.0 * targets[:, :1, None] * np.sin(2 * np.pi * 5 * t)
        signals[:, 6:] += 2.0 * targets[:, 1:, None]
        if shuffle:
            targets = targets[rng.permutation(n)]
        for i in range(n):
            writer.append(split, f"{split}-{i}", signals[i], targets[i])
    writer.finish({"classes": CLASSES})


def _probe(root, *, shuffle: bool) -> dict:
    """probe.json of a dataset written under ``root``."""
    _write(root / "data", shuffle=shuffle)
    assert main([ARGS[0], str(root / "data"), *ARGS[1:], "--out", str(root / "out")]) == 0
    return json.loads((root / "out" / RESULT).read_text())


def test_separable_classes_are_found(tmp_path):
    result = _probe(tmp_path, shuffle=False)
    assert result["classes"] == CLASSES and result["multilabel"] is True
    assert result["splits"] == SIZES and result["num_records"] == SIZES["test"]
    assert result["metrics"]["auroc_macro"] >= 0.9
    val_auroc = result["regularization"]["val_auroc_macro"]
    assert set(val_auroc) == {"0.001", "0.01", "0.1", "1", "10", "100"}
    assert val_auroc[f"{result['regularization']['chosen_C']:g}"] == max(val_auroc.values())
    # The metrics block has evaluate's schema (scoring.classification_report).
    metrics = result["metrics"]
    assert METRIC_KEYS | {"per_class"} == set(metrics)
    assert list(metrics["per_class"]) == CLASSES
    assert all(set(m) == {"auroc", "auprc", "f1", "support"} for m in metrics["per_class"].values())
    lo, hi = metrics["auroc_macro_ci95"]
    assert lo <= metrics["auroc_macro"] <= hi


def test_shuffled_labels_score_chance(tmp_path):
    assert 0.3 <= _probe(tmp_path, shuffle=True)["metrics"]["auroc_macro"] <= 0.7


def test_multiclass_regression_on_features():
    """Class ids: one multinomial regression; a class absent from train gets probability 0."""
    rng = np.random.default_rng(1)
    means = 3.0 * np.eye(4, 8)
    labels = {s: rng.integers(0, 3, n) for s, n in SIZES.items()}
    labels["test"][:4] = 3  # never seen in train or val
    features = {s: means[y] + rng.normal(0, 1, (len(y), 8)) for s, y in labels.items()}
    logits, chosen, val_auroc = fit_probe(features, labels, num_classes=4, multilabel=False)
    assert logits.shape == (SIZES["test"], 4) and np.all(logits[:, 3] == -np.inf)
    seen = labels["test"] < 3
    assert np.mean(logits[seen].argmax(axis=1) == labels["test"][seen]) > 0.8
    assert val_auroc[f"{chosen:g}"] == max(val_auroc.values()) > 0.9


def test_existing_result_is_not_overwritten(tmp_path, capsys):
    (tmp_path / RESULT).write_text("{}")
    status = main([ARGS[0], "synthetic-ecg", *ARGS[1:], "--out", str(tmp_path)])
    assert status == 2 and f"already holds {RESULT}" in capsys.readouterr().err
    assert (tmp_path / RESULT).read_text() == "{}"
