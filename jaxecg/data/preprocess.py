"""The reference's offline ECG preprocessing (docs/reference.md#ecg-preprocessing), step by step.

``preprocess_ecg`` maps one raw record ``(12, T)`` at 500 Hz in millivolts to
the ``(12, 5000)`` float32 array the models were trained on: truncate to 5000
samples, NaN → 0, clip to ±4·std of the whole record, subtract an
asymmetric-least-squares baseline per lead (λ=1e7, p=0.3, 5 iterations), then
normalise each lead group [0:3], [3:6], [6:12] by its mean and variance.

Numerics follow the reference (MMCL-ECG-CMR ``utils/preprocessing.py`` as used
by dl-framework's ``ECGPreprocessor``): every step runs in the input's floating
dtype (float32 records stay float32 until the end, float64 stay float64), the
baseline solve runs in float64 through the same scipy sparse calls, and only
the result is cast to float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

FS = 500
LENGTH = 5000
LEADS = 12
LEAD_GROUPS = (3, 6, 12)
CLIP_STDS = 4.0
ALS_LAM = 1e7
ALS_P = 0.3
ALS_NITER = 5


def _float_dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)


def truncate(signal: np.ndarray, length: int = LENGTH) -> np.ndarray:
    """``(leads, T)`` → ``(leads, length)`` keeping the first samples; shorter is an error.

    The reference neither pads nor upsamples: a short record is rejected.
    """
    if signal.ndim != 2:
        raise ValueError(f"expected a (leads, T) signal, got shape {signal.shape}")
    if signal.shape[1] < length:
        raise ValueError(
            f"signal has {signal.shape[1]} samples, expected at least {length} "
            f"({length / FS:g} s at {FS} Hz)"
        )
    return signal[:, :length]


def clip_outliers(signal: np.ndarray, num_std: float = CLIP_STDS) -> np.ndarray:
    """Clip to ±``num_std``·std, the std taken over the whole record (all leads at once)."""
    std = np.std(signal)
    return np.clip(signal, -num_std * std, num_std * std)


@functools.lru_cache(maxsize=8)
def _smoothness_penalty(length: int, lam: float) -> sparse.dia_matrix:
    """λ·D·Dᵀ with D the ``(L, L-2)`` second-difference matrix; cached, never mutated."""
    second_diff = sparse.diags(
        [1.0, -2.0, 1.0], [0, -1, -2], shape=(length, length - 2), dtype=np.float64
    )
    return lam * second_diff.dot(second_diff.transpose())


def baseline_als(
    y: np.ndarray, lam: float = ALS_LAM, p: float = ALS_P, niter: int = ALS_NITER
) -> np.ndarray:
    """Asymmetric-least-squares baseline of a 1-D signal (Eilers & Boelens 2005), float64.

    Each iteration solves ``(W + λ·DᵀD) z = W y`` with weights ``p`` where the
    signal lies above the baseline and ``1 - p`` below (0 where they are equal),
    starting from all-ones weights — the reference's exact operation sequence
    (scipy sparse LU via ``spsolve``), so results match it bit for bit.
    """
    if y.ndim != 1 or y.shape[0] < 3:
        raise ValueError(f"baseline_als expects a 1-D signal of >= 3 samples, got {y.shape}")
    length = y.shape[0]
    penalty = _smoothness_penalty(length, float(lam))
    w = np.ones(length)
    weights = sparse.spdiags(w, 0, length, length)
    z = y
    for _ in range(niter):
        weights.setdiag(w)
        # spsolve itself would make this CSC copy (with a warning) for the DIA sum.
        z = spsolve(sparse.csc_array(weights + penalty), w * y)
        w = p * (y > z) + (1 - p) * (y < z)
    return z


def remove_baseline(
    signal: np.ndarray, lam: float = ALS_LAM, p: float = ALS_P, niter: int = ALS_NITER
) -> np.ndarray:
    """Subtract each lead's ALS baseline; the baseline is stored in the signal's dtype first."""
    baselines = np.zeros_like(signal)
    for lead in range(signal.shape[0]):
        baselines[lead] = baseline_als(signal[lead], lam=lam, p=p, niter=niter)
    return signal - baselines


def normalise_groups(signal: np.ndarray, groups: Sequence[int] = LEAD_GROUPS) -> np.ndarray:
    """Normalise lead groups ``[0:g0], [g0:g1], ...`` by their joint mean and variance.

    ``(x - mean) / (var + 1e-12) ** 0.5`` with population variance over all
    samples of the group's leads; statistics are cast to the signal's dtype as in
    the reference. ``groups`` are the exclusive upper lead indices, the last one
    must equal the number of leads.
    """
    if signal.ndim != 2 or groups[-1] != signal.shape[0]:
        raise ValueError(
            f"lead groups {tuple(groups)} need a ({groups[-1]}, T) signal, got {signal.shape}"
        )
    mean = np.empty((signal.shape[0], 1), dtype=signal.dtype)
    var = np.empty((signal.shape[0], 1), dtype=signal.dtype)
    lower = 0
    for upper in groups:
        mean[lower:upper] = np.mean(signal[lower:upper])
        var[lower:upper] = np.var(signal[lower:upper])
        lower = upper
    # The epsilon inside the square root is the reference's; it only matters for flat groups.
    return (signal - mean) / (var + 1.0e-12) ** 0.5


def preprocess_ecg(signal: np.ndarray, *, fs: float = FS, length: int = LENGTH) -> np.ndarray:
    """Reference preprocessing of one record: ``(12, T)`` mV at 500 Hz → ``(12, length)`` float32.

    ``fs`` is the record's sampling rate and must be 500 Hz (resample first with
    ``read_wfdb(..., target_fs=500)``); ``T`` must be at least ``length``.
    NaN samples become 0; ±inf samples mark a corrupt record and raise.
    """
    if fs != FS:
        raise ValueError(
            f"preprocess_ecg expects {FS} Hz, got {fs:g} Hz; "
            f"resample first (read_wfdb(..., target_fs={FS}))"
        )
    x = np.asarray(signal)
    if x.ndim != 2 or x.shape[0] != LEADS:
        raise ValueError(f"preprocess_ecg expects ({LEADS}, T) leads-first, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"preprocess_ecg expects a numeric signal, got dtype {x.dtype}")
    x = truncate(x, length).astype(_float_dtype(x), copy=True)
    if np.isinf(x).any():
        raise ValueError("signal contains ±inf samples (corrupt record)")
    x = np.nan_to_num(x, nan=0.0)
    x = clip_outliers(x)
    x = remove_baseline(x)
    x = normalise_groups(x)
    return x.astype(np.float32)
