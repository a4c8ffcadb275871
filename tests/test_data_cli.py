"""``jaxecg preprocess``: records + labels CSV → dataset; bad records reported and skipped."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxecg.cli import main as jaxecg_main
from jaxecg.data import cli, load_split, make_loader, preprocess_ecg, read_manifest
from jaxecg.data.synthetic import synthetic_ecg_record

PTB_DIR = Path(__file__).resolve().parent / "data" / "ptb-s0010_re"


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """Four good synthetic records, the real PTB record (1000 Hz, 15 signals) and bad ones."""
    root = tmp_path_factory.mktemp("records")
    for i in range(4):
        x, _ = synthetic_ecg_record(i, seed=5, length=5000, raw=True)
        np.savez(root / f"syn{i}.npz", signal=x, fs=500)
    (root / "ptb").mkdir()
    for suffix in (".hea", ".dat"):
        shutil.copy(PTB_DIR / f"s0010_re{suffix}", root / "ptb" / f"s0010_re{suffix}")
    np.savez(root / "short.npz", signal=np.zeros((12, 1200), np.float32), fs=500)
    np.savez(root / "sixlead.npz", signal=np.zeros((6, 5000), np.float32), fs=500)
    (root / "garbled.npz").write_bytes(b"\x00" * 64)
    rows = [
        ("syn0", "normal", "train"),
        ("syn1", "mi", "train"),
        ("syn2", "normal", "val"),
        ("syn3", "mi", "test"),
        ("ptb/s0010_re", "mi", "train"),
        ("short", "normal", "train"),
        ("sixlead", "normal", "train"),
        ("garbled", "mi", "val"),
        ("nowhere", "mi", "test"),
    ]
    (root / "labels.csv").write_text(
        "record,diagnosis,fold\n" + "".join(f"{r},{d},{f}\n" for r, d, f in rows)
    )
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    status = jaxecg_main(["preprocess", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_preprocess_writes_splits_and_reports_skips(records, tmp_path, capsys):
    out = tmp_path / "ds"
    status, stdout, stderr = run(
        capsys,
        records,
        "--labels",
        records / "labels.csv",
        "--out",
        out,
        "--label-column",
        "diagnosis",
        "--split-column",
        "fold",
        "--channels",
        "0-11",
    )
    assert status == 0
    assert "wrote 4 records (train 2, val 1, test 1)" in stdout and "skipped 5" in stdout
    manifest = read_manifest(out)
    reasons = {s["record"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"ptb/s0010_re", "short", "sixlead", "garbled", "nowhere"}
    assert "sampling rate 1000 Hz, expected 500 Hz" in reasons["ptb/s0010_re"]
    assert "1200 samples, expected at least 5000" in reasons["short"]
    assert (
        "channels [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] out of range for 6 leads"
        in reasons["sixlead"]
    )
    assert "cannot be read" in reasons["garbled"] and "not found" in reasons["nowhere"]
    for name in reasons:
        assert f"skipped {name}: " in stderr  # reported while running, by name
    assert "preprocess: 100%" in stderr  # the progress bar
    assert manifest["label"] == {"kind": "class", "column": "diagnosis", "names": ["mi", "normal"]}
    train = load_split(out, "train")
    assert len(train) == 2 and train.record_name(1) == "syn1"
    record = train[1]
    assert record["ecg"].shape == (12, 5000) and record["label"] == 0  # "mi"
    raw, _ = synthetic_ecg_record(1, seed=5, length=5000, raw=True)
    np.testing.assert_array_equal(record["ecg"], preprocess_ecg(raw))
    batch = next(make_loader(train, batch_size=2, shard_index=0, shard_count=1))
    assert batch["ecg"].shape == (2, 12, 5000)


def test_resample_option_admits_the_1000hz_record(records, tmp_path, capsys):
    (tmp_path / "one.csv").write_text("record,label\nptb/s0010_re,3\nsyn0,1\n")
    out = tmp_path / "ds"
    status, stdout, _ = run(
        capsys,
        records,
        "--labels",
        tmp_path / "one.csv",
        "--out",
        out,
        "--resample",
        "--channels",
        "0-11",
        "--val-frac",
        "0",
        "--test-frac",
        "0",
    )
    assert status == 0 and "wrote 2 records (train 2, val 0, test 0)" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["resampled"] is True and manifest["skipped"] == []
    train = load_split(out, "train")
    assert sorted(int(train[i]["label"]) for i in range(2)) == [1, 3]
    assert len(load_split(out, "val")) == 0


def test_bad_invocations_exit_with_one_line(records, tmp_path, capsys):
    status, _, err = run(
        capsys,
        records,
        "--labels",
        records / "labels.csv",
        "--out",
        tmp_path / "x",
        "--label-column",
        "nope",
    )
    assert status == 2 and "missing column(s) ['nope']" in err and err.count("\n") == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    status, _, err = run(
        capsys,
        records,
        "--labels",
        records / "labels.csv",
        "--out",
        tmp_path / "full",
        "--label-column",
        "diagnosis",
    )
    assert status == 2 and "exists and is not an empty directory" in err
    status, _, err = run(
        capsys, tmp_path / "absent", "--labels", records / "labels.csv", "--out", tmp_path / "y"
    )
    assert status == 2 and "is not a directory" in err
    (tmp_path / "bad.csv").write_text("record,label\nshort,0\n")
    status, _, err = run(capsys, records, "--labels", tmp_path / "bad.csv", "--out", tmp_path / "z")
    assert status == 1 and "no record could be preprocessed" in err


def _preprocess(capsys, records, csv, out, *extra) -> tuple[int, str, str]:
    return run(
        capsys,
        records,
        "--labels",
        csv,
        "--out",
        out,
        "--val-frac",
        "0",
        "--test-frac",
        "0",
        *extra,
    )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("syn0,1\nsyn1,0\nsyn0.npz,1\n", "duplicate record id(s) ['syn0']; list each once"),
        ("syn0,1\nsyn0,0\n", "record 'syn0' is listed twice with different labels (1 and 0)"),
        ("syn0,1\nsyn1, \n", "empty label in column 'label' for record(s) ['syn1']"),
    ],
)
def test_ambiguous_label_rows_are_rejected(records, tmp_path, capsys, rows, message):
    (tmp_path / "l.csv").write_text("record,label\n" + rows)
    status, _, err = _preprocess(capsys, records, tmp_path / "l.csv", tmp_path / "ds")
    assert status == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "ds").exists()


def test_nan_and_transposed_records_are_skipped_with_a_reason(records, tmp_path, capsys):
    np.savez(tmp_path / "nan.npz", signal=np.full((12, 5000), np.nan, np.float32), fs=500)
    x, _ = synthetic_ecg_record(0, seed=5, length=5000, raw=True)
    np.savez(tmp_path / "transposed.npz", signal=x.T, fs=500)
    np.savez(tmp_path / "good.npz", signal=x, fs=500)
    (tmp_path / "l.csv").write_text("record,label\nnan,0\ntransposed,1\ngood,1\n")
    status, stdout, _ = _preprocess(capsys, tmp_path, tmp_path / "l.csv", tmp_path / "ds")
    assert status == 0 and "wrote 1 records" in stdout
    reasons = {s["record"]: s["reason"] for s in read_manifest(tmp_path / "ds")["skipped"]}
    assert "every sample of the first 5000 is NaN (no signal)" in reasons["nan"]
    assert (
        "shape (5000, 12) has more leads than samples; it looks transposed (T, leads)"
        in reasons["transposed"]
    )


def test_failed_and_killed_preprocess_leave_nothing_that_blocks_the_retry(
    records, tmp_path, capsys
):
    out = tmp_path / "ds"
    (tmp_path / "bad.csv").write_text("record,label\nshort,0\n")
    status, _, err = _preprocess(capsys, records, tmp_path / "bad.csv", out)
    assert status == 1 and "no record could be preprocessed" in err
    assert sorted(tmp_path.iterdir()) == [tmp_path / "bad.csv"]  # no --out, no partial
    # What a kill -9 leaves: a partial directory named for a process that no longer runs.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".ds.partial-{socket.gethostname()}-{dead.stdout.strip()}-abcd1234"
    stale.mkdir()
    (stale / "train_ecg.partial.npy").write_bytes(b"\0" * 1024)
    (tmp_path / "good.csv").write_text("record,label\nsyn0,0\nsyn1,1\n")
    status, stdout, _ = _preprocess(capsys, records, tmp_path / "good.csv", out)
    assert status == 0 and "wrote 2 records" in stdout
    assert len(load_split(out, "train")) == 2
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "ds", "good.csv"]


def test_sigint_stops_preprocess_cleanly_and_the_rerun_completes(
    records, tmp_path, capsys, monkeypatch
):
    job = cli._job

    def job_then_ctrl_c(task):  # Ctrl-C while the first record is processed
        os.kill(os.getpid(), signal.SIGINT)
        return job(task)

    monkeypatch.setattr(cli, "_job", job_then_ctrl_c)
    out = tmp_path / "ds"
    (tmp_path / "good.csv").write_text("record,label\nsyn0,0\nsyn1,1\n")
    status, _, err = _preprocess(capsys, records, tmp_path / "good.csv", out)
    assert status == 130
    assert f"stopped by SIGINT after 1 of 2 records; nothing written to {out}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv"]  # no --out, no partial
    monkeypatch.undo()
    status, stdout, _ = _preprocess(capsys, records, tmp_path / "good.csv", out)
    assert status == 0 and "wrote 2 records" in stdout
