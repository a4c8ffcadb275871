"""Reference preprocessing checked step by step against independent numpy/LAPACK code.

The golden set has no preprocessing case, so every expected value here is
computed in the test by a different route: the ALS baseline with a banded
Cholesky solve (LAPACK ``pbsv``) instead of scipy's sparse LU, the statistics
in float64 with plain numpy reductions.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from scipy.linalg import solveh_banded

from jaxecg.data import preprocess as pp
from jaxecg.data import preprocess_ecg, read_wfdb
from jaxecg.data.synthetic import synthetic_ecg_record

PTB = (
    Path(os.environ.get("JAXECG_DATA_DIR", Path(__file__).resolve().parent / "data"))
    / "ptb-s0010_re"
    / "s0010_re"
)


def banded_als(y: np.ndarray, lam: float, p: float, niter: int) -> np.ndarray:
    """ALS baseline via the symmetric pentadiagonal system in LAPACK banded storage."""
    n = y.shape[0]
    stencil = np.array([1.0, -2.0, 1.0])
    # Bands of lam * Δᵀ Δ accumulated row by row of the (n-2, n) second-difference Δ.
    main = np.zeros(n)
    off1 = np.zeros(n - 1)
    off2 = np.zeros(n - 2)
    rows = np.arange(n - 2)
    for a in range(3):
        np.add.at(main, rows + a, stencil[a] ** 2)
    for a in range(2):
        np.add.at(off1, rows + a, stencil[a] * stencil[a + 1])
    off2 += stencil[0] * stencil[2]
    w = np.ones(n)
    for _ in range(niter):
        ab = np.zeros((3, n))
        ab[0, 2:] = lam * off2
        ab[1, 1:] = lam * off1
        ab[2] = lam * main + w
        z = solveh_banded(ab, w * y)
        w = np.where(y > z, p, np.where(y < z, 1 - p, 0.0))
    return z


@pytest.fixture(scope="module")
def raw_record() -> np.ndarray:
    """A raw synthetic 12-lead record (mV, baseline wander, noise), 12 s at 500 Hz."""
    x, _ = synthetic_ecg_record(7, seed=11, length=6000, raw=True)
    return x


def test_truncate_nan_and_clip_steps(raw_record):
    x = raw_record.copy()
    x[3, 100:110] = np.nan
    x[5, 2000] = 50.0  # an outlier the clip must cap
    cut = pp.truncate(x)
    np.testing.assert_array_equal(cut, x[:, :5000])
    zeroed = np.nan_to_num(cut, nan=0.0)
    assert np.all(zeroed[3, 100:110] == 0)
    clipped = pp.clip_outliers(zeroed)
    std = np.sqrt(np.mean((zeroed.astype(np.float64) - zeroed.mean(dtype=np.float64)) ** 2))
    assert clipped[5, 2000] == pytest.approx(4 * std, rel=1e-5)
    inside = np.abs(zeroed) < 4 * std * (1 - 1e-5)
    np.testing.assert_array_equal(clipped[inside], zeroed[inside])
    assert np.abs(clipped).max() <= 4 * std * (1 + 1e-6)


def test_truncate_rejects_short_records():
    with pytest.raises(ValueError, match="4999 samples, expected at least 5000"):
        pp.truncate(np.zeros((12, 4999)))


def test_baseline_matches_banded_cholesky(raw_record):
    y = raw_record[1, :5000].astype(np.float64)
    ours = pp.baseline_als(y, lam=1e7, p=0.3, niter=5)
    ref = banded_als(y, lam=1e7, p=0.3, niter=5)
    assert np.abs(ours - ref).max() < 1e-7 * np.abs(y).max()
    # The baseline tracks the wander: residual wander is far below the raw one.
    assert np.std(y - ours) < np.std(y)


def test_group_normalisation_statistics(raw_record):
    x = raw_record[:, :5000].astype(np.float64)
    out = pp.normalise_groups(x)
    for lo, hi in [(0, 3), (3, 6), (6, 12)]:
        group = x[lo:hi]
        expected = (group - group.mean()) / np.sqrt(group.var() + 1e-12)
        np.testing.assert_allclose(out[lo:hi], expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"need a \(12, T\) signal"):
        pp.normalise_groups(x[:11])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_preprocess_ecg_equals_independent_pipeline(raw_record, dtype):
    x = raw_record.astype(dtype)
    x[0, 10:20] = np.nan
    out = preprocess_ecg(x)
    assert out.shape == (12, 5000) and out.dtype == np.float32
    # Independent pipeline in float64.
    ref = np.nan_to_num(x[:, :5000].astype(np.float64), nan=0.0)
    s = ref.std()
    ref = np.clip(ref, -4 * s, 4 * s)
    ref = ref - np.stack([banded_als(lead, 1e7, 0.3, 5) for lead in ref])
    for lo, hi in [(0, 3), (3, 6), (6, 12)]:
        ref[lo:hi] = (ref[lo:hi] - ref[lo:hi].mean()) / np.sqrt(ref[lo:hi].var() + 1e-12)
    # float32 inputs are processed in float32 like the reference, hence the looser bound.
    atol = 2e-4 if dtype == np.float32 else 1e-5
    np.testing.assert_allclose(out, ref, atol=atol)


def test_preprocess_ecg_rejects_bad_input(raw_record):
    with pytest.raises(ValueError, match="expects 500 Hz, got 1000 Hz"):
        preprocess_ecg(raw_record, fs=1000)
    with pytest.raises(ValueError, match=r"expects \(12, T\) leads-first, got shape \(6000, 12\)"):
        preprocess_ecg(raw_record.T)
    corrupt = raw_record.copy()
    corrupt[2, 7] = np.inf
    with pytest.raises(ValueError, match="inf"):
        preprocess_ecg(corrupt)


def test_real_ptb_record_reads_and_preprocesses():
    raw, fs = read_wfdb(PTB, channels=range(12))
    assert fs == 1000 and raw.shape == (12, 38400) and raw.dtype == np.float32
    # Millivolts and lead order: Einthoven III = II - I holds to the 0.5 µV quantisation.
    np.testing.assert_allclose(raw[2], raw[1] - raw[0], atol=2e-3)
    assert 0.3 < np.percentile(np.abs(raw[:6]), 99.9) < 5.0
    with pytest.raises(ValueError, match="expects 500 Hz, got 1000 Hz"):
        preprocess_ecg(raw, fs=fs)
    signal, fs500 = read_wfdb(PTB, channels=range(12), target_fs=500)
    assert fs500 == 500 and signal.shape == (12, 19200)
    # Anti-aliased decimation keeps the waveform: compare with every other raw sample.
    assert np.corrcoef(signal[1, 100:-100], raw[1, 200:-200:2])[0, 1] > 0.99
    out = preprocess_ecg(signal, fs=fs500)
    assert out.shape == (12, 5000) and np.isfinite(out).all()
    for lo, hi in [(0, 3), (3, 6), (6, 12)]:
        assert abs(out[lo:hi].mean()) < 1e-5
        assert out[lo:hi].std() == pytest.approx(1.0, abs=1e-4)
    # Baseline removal: each lead's 2-s moving mean (wander) is small after preprocessing.
    kernel = np.ones(1000) / 1000
    wander = np.array([np.convolve(lead, kernel, mode="valid") for lead in out])
    assert np.abs(wander).max() < 0.5
