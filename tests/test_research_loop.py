"""The research loop on built-in data: pretrain → fine-tune from the run directory →
``jaxecg evaluate``, for ECG (MAE) and CMR (SimCLR); a run that reports itself.

Runs reuse the programs of the end-to-end training tests (same overrides, so the
compilation cache can serve them) and stop after a few steps with ``train.stop_after``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from train_helpers import quiet_args, records, run

from jaxecg.data import ECGAugmentConfig, ecg_augment_batch
from jaxecg.data.splits import open_split
from jaxecg.encoders import load_model
from jaxecg.evaluate import main as evaluate_main
from jaxecg.models import ECGClassifier

_TRANSFER = re.compile(r"pretrained weights from (.*?): loaded (\d+) tensors.*?, initialised (\d+)")
EVAL_RECORDS = 10  # not a multiple of the batch (8 ECG, 4 CMR): the last batch is padded


def _transfer(out: str) -> tuple[str, int, int]:
    origin, loaded, initialised = _TRANSFER.search(out).groups()
    return origin, int(loaded), int(initialised)


def _evaluate(workdir, *args: str) -> dict:
    out = workdir / "eval.json"
    code = evaluate_main([str(workdir), "--out", str(out), "--no-progress", *args])
    assert code == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def ecg_loop(tmp_path_factory):
    """A 4-step MAE pretraining run (no evaluation: its newest checkpoint is the source)."""
    mae = tmp_path_factory.mktemp("ecg_loop") / "mae"
    assert run("pretrain_mae_ecg", mae, *quiet_args("pretrain_mae_ecg"), "train.stop_after=4") == 0
    return mae


def test_mae_run_fine_tunes_and_evaluates(ecg_loop, tmp_path, capsys) -> None:
    mae, ft = ecg_loop, tmp_path / "ft"
    capsys.readouterr()
    code = run(
        "finetune_ecg",
        ft,
        *quiet_args("finetune_ecg"),
        "train.stop_after=4",
        "train.eval_every=2",
        f"data.num_eval={EVAL_RECORDS}",
        f"pretrained_weights={mae}",
    )
    out = capsys.readouterr().out
    assert code == 0, out
    # Every tensor of the ViT came from the MAE run; only the classifier's own layers are new.
    origin, loaded, initialised = _transfer(out)
    assert origin.startswith(f"mae_pretrain run {mae}, step 4")
    model = load_model(ft)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(model.variables)]
    new = [n for n in names if re.search(r"\['(head|fc_norm|attention_pool)'\]", n)]
    assert (loaded, initialised) == (len(names) - len(new), len(new))

    # The run reports itself: a line per evaluation, curves, and a closing summary.
    assert re.search(r"step 2: val loss [\d.]+, auroc", out) and "step 4: val loss" in out
    assert (ft / "curves.png").stat().st_size > 0
    best = max((r for r in records(ft) if "val/auroc" in r), key=lambda r: r["val/auroc"])
    assert f"checkpoint for evaluation: step {best['step']}, best by val auroc" in out
    assert f"logs: {ft / 'metrics.jsonl'}" in out

    result = _evaluate(ft, "--split", "test", "--bootstrap-samples", "20")
    assert result["split"] == "test" and result["checkpoint_step"] == best["step"]
    assert result["num_records"] == EVAL_RECORDS
    assert result["classes"] == ["sinus", "tachycardia", "atrial_fibrillation", "st_elevation"]
    assert set(result["metrics"]) == {
        "auroc_macro",
        "auprc_macro",
        "f1_macro",
        "accuracy",
        "auroc_macro_ci95",
        "per_class",
    }
    assert (ft / "eval_roc.png").stat().st_size > 0

    # Every record counts: scikit-learn on all of them, from logits computed here unbatched.
    chosen = load_model(ft / "checkpoints" / str(best["step"]))
    split = open_split("ecg", "test", num_records=EVAL_RECORDS, seed=0, size=1000, num_classes=4)
    x = np.stack([split[i]["ecg"] for i in range(EVAL_RECORDS)])
    labels = np.array([split[i]["label"] for i in range(EVAL_RECORDS)])
    view = ecg_augment_batch(jax.random.key(0), x, ECGAugmentConfig(time_steps=500), False)
    logits = ECGClassifier(chosen.config).apply(chosen.variables, view, train=False)
    probs = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    truth = np.eye(4)[labels]
    per_class = result["metrics"]["per_class"]
    for c, name in enumerate(result["classes"]):
        assert per_class[name]["support"] == truth[:, c].sum()
        np.testing.assert_allclose(
            per_class[name]["auroc"], roc_auc_score(truth[:, c], probs[:, c])
        )
        np.testing.assert_allclose(
            per_class[name]["auprc"], average_precision_score(truth[:, c], probs[:, c])
        )
    macro = np.mean([roc_auc_score(truth[:, c], probs[:, c]) for c in range(4)])
    np.testing.assert_allclose(result["metrics"]["auroc_macro"], macro)


def test_simclr_run_fine_tunes_and_evaluates(tmp_path, capsys, monkeypatch) -> None:
    # Relative paths, as a user types them (Orbax reads metadata only through absolute ones).
    monkeypatch.chdir(tmp_path)
    simclr, ft = tmp_path / "simclr", tmp_path / "ft"
    assert (
        run("pretrain_simclr_cmr", simclr, *quiet_args("pretrain_simclr_cmr"), "train.stop_after=2")
        == 0
    )
    capsys.readouterr()
    code = run(
        "finetune_cmr",
        ft,
        *quiet_args("finetune_cmr"),
        "train.stop_after=2",
        f"data.num_eval={EVAL_RECORDS}",
        "pretrained_weights=simclr",
    )
    out = capsys.readouterr().out
    assert code == 0, out
    # The whole ResNet (parameters and BatchNorm statistics) came from the SimCLR run.
    origin, loaded, initialised = _transfer(out)
    assert origin.startswith(f"simclr_pretrain run {simclr}, step 2")
    model = load_model(ft)
    encoder = len(jax.tree.leaves(model.variables["params"]["encoder"])) + len(
        jax.tree.leaves(model.variables["batch_stats"]["encoder"])
    )
    head = len(jax.tree.leaves(model.variables["params"]["head"]))
    assert (loaded, initialised) == (encoder, head)

    result = _evaluate(
        Path("ft"), "--split", "val", "--checkpoint", "latest", "--bootstrap-samples", "20"
    )
    assert (result["split"], result["num_records"], result["checkpoint_step"]) == (
        "val",
        EVAL_RECORDS,
        2,
    )
    assert result["classes"] == ["normal", "dilated", "hypertrophic"]
    supports = [c["support"] for c in result["metrics"]["per_class"].values()]
    assert sum(supports) == EVAL_RECORDS
