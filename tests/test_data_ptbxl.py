"""``jaxecg preprocess --format ptbxl``: a PTB-XL root made here → labels, folds and classes as
constructed (the PTB-XL benchmark's aggregation), and a fine-tuning run on the result.

The fixture is a miniature PTB-XL: both CSVs in the dataset's schema with real SCP codes and
statement rows, and 10-s 500 Hz 12-lead WFDB records written with ``wfdb.wrsamp``.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import wfdb
from train_helpers import CONFIGS, records

from jaxecg.cli import main as jaxecg_main
from jaxecg.data import (
    load_split,
    preprocess_ecg,
    read_manifest,
    read_wfdb,
    synthetic_ecg_record,
)
from jaxecg.data.ptbxl import read_ptbxl
from jaxecg.data.synthetic import LEAD_NAMES
from jaxecg.errors import DataError
from jaxecg.train.cli import main as train_main

# scp_statements.csv rows as PTB-XL has them: code, diagnostic, form, rhythm,
# diagnostic_class, diagnostic_subclass (NDT is both diagnostic and form, PVC form and rhythm).
STATEMENTS = [
    ("NORM", "1.0", "", "", "NORM", "NORM"),
    ("IMI", "1.0", "", "", "MI", "IMI"),
    ("ASMI", "1.0", "", "", "MI", "AMI"),
    ("NDT", "1.0", "1.0", "", "STTC", "STTC"),
    ("ISC_", "1.0", "", "", "STTC", "ISC_"),
    ("LVH", "1.0", "", "", "HYP", "LVH"),
    ("CRBBB", "1.0", "", "", "CD", "CRBBB"),
    ("LAFB", "1.0", "", "", "CD", "LAFB/LPFB"),
    ("LVOLT", "", "1.0", "", "", ""),
    ("PVC", "", "1.0", "1.0", "", ""),
    ("SR", "", "", "1.0", "", ""),
    ("AFIB", "", "", "1.0", "", ""),
]
# (ecg_id, scp_codes, strat_fold, superdiagnostic labels as constructed; None: dropped)
DATABASE = [
    (1, {"NORM": 100.0, "SR": 0.0}, 3, {"NORM"}),
    (2, {"IMI": 80.0, "ASMI": 50.0, "SR": 0.0}, 1, {"MI"}),
    (4, {"LVH": 100.0, "ISC_": 50.0}, 2, {"HYP", "STTC"}),
    (5, {"CRBBB": 100.0, "LAFB": 100.0}, 4, {"CD"}),
    (7, {"NDT": 100.0, "LVOLT": 100.0}, 5, {"STTC"}),
    (8, {"IMI": 0.0, "SR": 0.0}, 6, {"MI"}),  # likelihood 0 still labels (benchmark: keys)
    (9, {"LVOLT": 100.0, "SR": 0.0}, 8, None),  # no diagnostic code: dropped
    (10, {"NORM": 80.0, "AFIB": 100.0}, 7, {"NORM"}),
    (12, {"ASMI": 100.0, "CRBBB": 100.0, "PVC": 100.0}, 8, {"CD", "MI"}),
    (13, {"NORM": 100.0}, 9, {"NORM"}),
    (14, {"LVH": 100.0, "NDT": 100.0}, 9, {"HYP", "STTC"}),
    (15, {"IMI": 100.0}, 9, {"MI"}),
    (16, {"LAFB": 100.0, "SR": 0.0}, 9, {"CD"}),
    (17, {"NORM": 100.0}, 10, {"NORM"}),
    (18, {"ISC_": 100.0}, 10, {"STTC"}),
    (19, {"SR": 0.0}, 10, None),  # dropped
    (20, {"LVH": 50.0}, 10, {"HYP"}),
    (21, {"ASMI": 100.0, "LVH": 100.0}, 10, {"HYP", "MI"}),
]
SUPERCLASSES = ["CD", "HYP", "MI", "NORM", "STTC"]  # the benchmark's (sorted) class order
EXPECTED_SPLITS = {
    "train": [str(i) for i, _, fold, sup in DATABASE if sup and fold <= 8],
    "val": [str(i) for i, _, fold, sup in DATABASE if sup and fold == 9],
    "test": [str(i) for i, _, fold, sup in DATABASE if sup and fold == 10],
}
TINY_VIT = [
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.img_size=[1,12,500]",
    "data.augment.time_steps=500",
]


def _filename(ecg_id: int) -> str:
    return f"records500/00000/{ecg_id:05d}_hr"


def write_ptbxl(root, database=DATABASE, *, signals: bool = True) -> None:
    """A miniature PTB-XL root at ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "scp_statements.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["", "description", "diagnostic", "form", "rhythm"]
            + ["diagnostic_class", "diagnostic_subclass", "Statement Category"]
        )
        for code, diag, form, rhythm, cls, sub in STATEMENTS:
            writer.writerow([code, f"{code} statement", diag, form, rhythm, cls, sub, "x"])
    with open(root / "ptbxl_database.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["ecg_id", "patient_id", "age", "sex", "scp_codes", "strat_fold"]
            + ["filename_lr", "filename_hr"]
        )
        for ecg_id, codes, fold, _ in database:
            writer.writerow(
                [ecg_id, 1000.0 + ecg_id, 60.0, 0, repr(codes), fold]
                + [f"records100/00000/{ecg_id:05d}_lr", _filename(ecg_id)]
            )
    if not signals:
        return
    (root / "records500" / "00000").mkdir(parents=True, exist_ok=True)
    for ecg_id, _, _, labels in database:
        if labels is None:
            continue  # a dropped record is never read
        signal, _ = synthetic_ecg_record(ecg_id, seed=3, length=5000, raw=True)
        wfdb.wrsamp(
            f"{ecg_id:05d}_hr",
            fs=500,
            units=["mV"] * 12,
            sig_name=list(LEAD_NAMES),
            p_signal=signal.T.astype(np.float64),
            fmt=["16"] * 12,
            write_dir=str(root / "records500" / "00000"),
        )


@pytest.fixture(scope="module")
def ptbxl_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptbxl") / "ptb-xl"
    write_ptbxl(root)
    return root


@pytest.fixture(scope="module")
def dataset(ptbxl_root, tmp_path_factory):
    """``jaxecg preprocess --format ptbxl`` on the fixture (default statement set)."""
    out = tmp_path_factory.mktemp("ptbxl_ds") / "ds"
    status = jaxecg_main(["preprocess", "--format", "ptbxl", str(ptbxl_root), "--out", str(out)])
    assert status == 0
    return out


def test_labels_and_folds_come_out_as_constructed(ptbxl_root, dataset):
    manifest = read_manifest(dataset)
    assert manifest["classes"] == SUPERCLASSES
    assert manifest["dropped_no_label"] == {"count": 2, "ecg_ids": ["9", "19"]}
    assert manifest["skipped"] == []
    expected = {i: sup for i, _, _, sup in DATABASE}
    for split, ids in EXPECTED_SPLITS.items():
        source = load_split(dataset, split)
        assert [source.record_name(i) for i in range(len(source))] == ids
        assert (dataset / f"{split}_ids.txt").read_text().split() == ids
        targets = np.load(dataset / f"{split}_label.npy")
        assert targets.dtype == np.float32 and targets.shape == (len(ids), 5)
        for row, ecg_id in zip(targets, ids):
            assert {SUPERCLASSES[c] for c in np.flatnonzero(row)} == expected[int(ecg_id)]
        assert set(np.unique(targets)) <= {0.0, 1.0}
    # The records are the fixture's WFDB signals, preprocessed as the reference does.
    signal, fs = read_wfdb(ptbxl_root / _filename(17))
    assert fs == 500 and signal.shape == (12, 5000)
    np.testing.assert_array_equal(load_split(dataset, "test")[0]["ecg"], preprocess_ecg(signal))


def test_other_statement_sets(tmp_path):
    write_ptbxl(tmp_path, signals=False)
    form = read_ptbxl(tmp_path, "form")
    assert form.classes == ["LVOLT", "NDT", "PVC"]
    assert form.ecg_ids == ["7", "9", "12", "14"]
    assert form.targets.tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]]
    assert form.splits == ["train", "train", "train", "val"]
    rhythm = read_ptbxl(tmp_path, "rhythm")
    assert rhythm.classes == ["AFIB", "PVC", "SR"]
    assert rhythm.dropped == ["4", "5", "7", "13", "14", "15", "17", "18", "20", "21"]
    sub = read_ptbxl(tmp_path, "subdiagnostic")
    assert sub.classes == ["AMI", "CRBBB", "IMI", "ISC_", "LAFB/LPFB", "LVH", "NORM", "STTC"]
    row = sub.targets[sub.ecg_ids.index("12")]
    assert [sub.classes[c] for c in np.flatnonzero(row)] == ["AMI", "CRBBB"]
    diagnostic = read_ptbxl(tmp_path, "diagnostic")
    assert "LVOLT" not in diagnostic.classes and "NDT" in diagnostic.classes
    assert len(read_ptbxl(tmp_path, "all").classes) == len(STATEMENTS)


def test_bad_tables_are_named(tmp_path, capsys):
    bad = [(1, {"NORM": 100.0}, 11, {"NORM"})]
    write_ptbxl(tmp_path / "fold", bad, signals=False)
    with pytest.raises(DataError, match="strat_fold of ecg_id 1 is '11', expected 1..10"):
        read_ptbxl(tmp_path / "fold")
    write_ptbxl(tmp_path / "none", [(1, {"SR": 0.0}, 1, None)], signals=False)
    status = jaxecg_main(
        ["preprocess", "--format", "ptbxl", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    )
    assert status == 2
    assert "no record has a label in the 'superdiagnostic' statements" in capsys.readouterr().err
    status = jaxecg_main(
        ["preprocess", "--format", "ptbxl", str(tmp_path / "fold"), "--labels", "rhythms"]
        + ["--out", str(tmp_path / "o")]
    )
    assert status == 2 and "unknown PTB-XL statement set 'rhythms'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_finetune_ptbxl_config_trains_on_it(dataset, tmp_path):
    status = train_main(
        [
            str(CONFIGS / "finetune_ptbxl.yaml"),
            *TINY_VIT,
            f"data.source={dataset}",
            "train.batch_size=4",
            "train.steps=2",
            "train.eval_every=2",
            f"train.workdir={tmp_path}",
            "train.progress_bar=false",
            "train.log_every=1",
        ]
    )
    assert status == 0
    log = records(tmp_path)
    assert [r["step"] for r in log] == [1, 2] and np.isfinite(log[-1]["val/auroc"])
    assert (tmp_path / "checkpoints" / "2").is_dir()
    # ... and the run is scored on fold 10, every record of it, under the dataset's class names.
    out = tmp_path / "test.json"
    status = jaxecg_main(
        ["evaluate", str(tmp_path), "--split", "test", "--out", str(out),
         "--bootstrap-samples", "20", "--no-progress"]
    )  # fmt: skip
    assert status == 0
    result = json.loads(out.read_text())
    test_ids = (dataset / "test_ids.txt").read_text().split()
    assert result["split"] == "test" and result["num_records"] == len(test_ids)
    assert result["classes"] == ["CD", "HYP", "MI", "NORM", "STTC"]
    assert set(result["metrics"]["per_class"]) == set(result["classes"])
