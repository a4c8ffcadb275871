"""The evaluate/probe metrics block against scikit-learn on hand-made scores."""

import numpy as np
from sklearn import metrics as skm

from jaxecg.scoring import classification_report, json_safe, rank_auroc


def _multilabel_case(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, 3))
    logits = 2.0 * labels - 1.0 + rng.normal(size=(n, 3))
    return logits, labels


def test_report_matches_sklearn_per_class_and_macro():
    logits, labels = _multilabel_case()
    report = classification_report(
        logits, labels, ["a", "b", "c"], multilabel=True, bootstrap_samples=50
    )
    probs = 1.0 / (1.0 + np.exp(-logits))
    for c, name in enumerate("abc"):
        got = report["per_class"][name]
        assert np.isclose(got["auroc"], skm.roc_auc_score(labels[:, c], probs[:, c]))
        assert np.isclose(got["auprc"], skm.average_precision_score(labels[:, c], probs[:, c]))
        assert np.isclose(got["f1"], skm.f1_score(labels[:, c], probs[:, c] >= 0.5))
        assert got["support"] == int(labels[:, c].sum())
    assert np.isclose(report["auroc_macro"], skm.roc_auc_score(labels, probs, average="macro"))
    lo, hi = report["auroc_macro_ci95"]
    assert lo < report["auroc_macro"] < hi


def test_report_multiclass_uses_softmax_and_argmax():
    labels = np.array([0, 1, 2, 2, 1, 0])
    logits = np.eye(3)[[0, 1, 2, 1, 1, 0]] * 3.0
    report = classification_report(
        logits, labels, ["x", "y", "z"], multilabel=False, bootstrap_samples=20
    )
    assert report["per_class"]["z"]["support"] == 2
    assert np.isclose(report["per_class"]["z"]["f1"], skm.f1_score(labels == 2, [0, 0, 1, 0, 0, 0]))
    assert np.isclose(report["accuracy"], skm.balanced_accuracy_score(labels, [0, 1, 2, 1, 1, 0]))


def test_class_without_negatives_is_nan_not_an_error():
    logits, labels = _multilabel_case(20)
    labels[:, 1] = 1
    report = classification_report(
        logits, labels, ["a", "b", "c"], multilabel=True, bootstrap_samples=20
    )
    assert np.isnan(report["per_class"]["b"]["auroc"])
    assert np.isfinite(report["auroc_macro"])  # macro over the classes the split can score


def test_json_safe_turns_undefined_scores_into_null():
    report = {"auroc": float("nan"), "ci": [float("-inf"), 0.5], "per": {"a": {"f1": 1.0}}}
    assert json_safe(report) == {"auroc": None, "ci": [None, 0.5], "per": {"a": {"f1": 1.0}}}


def test_rank_auroc_equals_sklearn_row_by_row_with_ties():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random((20, 40)), 1)  # rounded: many ties
    labels = rng.integers(0, 2, (20, 40))
    labels[:, :2] = [0, 1]  # both classes in every row
    expected = [skm.roc_auc_score(y, s) for y, s in zip(labels, scores)]
    np.testing.assert_allclose(rank_auroc(scores, labels), expected, rtol=1e-12)
