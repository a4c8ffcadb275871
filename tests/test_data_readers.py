"""Record readers: array formats, explicit rates, resampling, corrupt files named in errors."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxecg.data import check_rate, read_array, read_record, read_wfdb, resample

PTB_DIR = Path(__file__).resolve().parent / "data" / "ptb-s0010_re"


def test_npz_with_stored_rate_and_npy_with_given_rate(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(2, 12)
    np.savez(tmp_path / "a.npz", signal=x, fs=250)
    signal, fs = read_array(tmp_path / "a.npz")
    assert fs == 250 and signal.dtype == np.float32
    np.testing.assert_array_equal(signal, x)
    np.save(tmp_path / "b.npy", x)
    with pytest.raises(ValueError, match="no sampling rate stored; pass fs="):
        read_array(tmp_path / "b.npy")
    assert read_record(tmp_path / "b.npy", fs=100)[1] == 100
    with pytest.raises(ValueError, match="stores fs=250 Hz but fs=500 was given"):
        read_array(tmp_path / "a.npz", fs=500)
    with pytest.raises(ValueError, match=r"channels \[5\] out of range for 2 leads"):
        read_record(tmp_path / "a.npz", channels=[5])


def test_wrongly_shaped_and_corrupt_arrays_name_the_file(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(100))
    with pytest.raises(
        ValueError, match=r"flat.npy: expected a numeric \(leads, T\) array, got shape \(100,\)"
    ):
        read_array(tmp_path / "flat.npy", fs=500)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz: cannot be read"):
        read_array(tmp_path / "junk.npz", fs=500)


def test_corrupt_wfdb_records_name_the_record(tmp_path):
    shutil.copy(PTB_DIR / "s0010_re.hea", tmp_path / "s0010_re.hea")
    (tmp_path / "s0010_re.dat").write_bytes((PTB_DIR / "s0010_re.dat").read_bytes()[:1000])
    with pytest.raises(ValueError, match="s0010_re: cannot be read"):
        read_wfdb(tmp_path / "s0010_re")
    (tmp_path / "bad.hea").write_text("this is not a header\n")
    with pytest.raises(ValueError, match="bad: cannot be read"):
        read_wfdb(tmp_path / "bad.hea")
    with pytest.raises(ValueError, match="absent.hea not found"):
        read_wfdb(tmp_path / "absent")


def test_check_rate_message():
    check_rate(500.0, 500)
    with pytest.raises(
        ValueError, match="sampling rate 250 Hz, expected 500 Hz; resample it explicitly"
    ):
        check_rate(250, 500)


def test_resample_keeps_frequency_and_length():
    fs, seconds = 1000, 4
    t = np.arange(fs * seconds) / fs
    x = np.stack([np.sin(2 * np.pi * 7 * t), np.cos(2 * np.pi * 3 * t)])
    y = resample(x, fs, 500)
    assert y.shape == (2, 2000) and y.dtype == np.float32
    t2 = np.arange(2000) / 500
    # Away from the edges the decimated sines are exact to filter ripple.
    np.testing.assert_allclose(y[0, 50:-50], np.sin(2 * np.pi * 7 * t2)[50:-50], atol=2e-3)
    up = resample(x[:, :1000], 1000, 1500)
    assert up.shape == (2, 1500)
    np.testing.assert_array_equal(resample(x, 1000, 1000), x.astype(np.float32))
