"""Readers for raw ECG records: WFDB (PhysioNet) and ``.npy``/``.npz`` arrays.

Every reader returns ``(signal, fs)`` with ``signal`` a ``(leads, T)`` float32
array in millivolts and ``fs`` the sampling rate in Hz. Rates are never assumed:
the reference silently treats every record as 500 Hz; here a record at another
rate is either resampled on request (``target_fs``) or rejected by
:func:`check_rate` with both rates in the message.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import signal as sps

from jaxecg.errors import DataError

# Physical units WFDB headers use for ECG channels, as factors to millivolts.
_TO_MILLIVOLT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}

_WFDB_SUFFIXES = (".hea", ".dat", ".mat")


def check_rate(fs: float, expected: float, *, name: str = "signal") -> None:
    """Raise :class:`~jaxecg.errors.DataError` unless ``fs`` equals ``expected`` (both in Hz)."""
    if not np.isclose(float(fs), float(expected), rtol=0.0, atol=1e-6):
        raise DataError(
            f"{name}: sampling rate {float(fs):g} Hz, expected {float(expected):g} Hz; "
            f"resample it explicitly (read_wfdb(..., target_fs={float(expected):g}) "
            "or 'jaxecg preprocess --resample')"
        )


def resample(signal: np.ndarray, fs: float, target_fs: float) -> np.ndarray:
    """Resample ``(leads, T)`` from ``fs`` to ``target_fs`` Hz along time (float32 out).

    Polyphase filtering (``scipy.signal.resample_poly``) with the exact rational
    ratio, so 1000 → 500 Hz is an anti-aliased decimation by 2. Missing samples
    (NaN) become 0 first, as the preprocessing would do, so the filter cannot
    smear them over their neighbours.
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"resample expects (leads, T), got shape {x.shape}")
    if fs <= 0 or target_fs <= 0:
        raise DataError(f"sampling rates must be positive, got fs={fs}, target_fs={target_fs}")
    ratio = Fraction(target_fs).limit_denominator(10_000) / Fraction(fs).limit_denominator(10_000)
    if ratio == 1:
        return x.astype(np.float32)
    x = np.nan_to_num(x, nan=0.0)
    # Edge padding by a fitted line instead of zeros avoids a step at both ends.
    y = sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1, padtype="line")
    return y.astype(np.float32)


def _finish(signal: np.ndarray, fs: float, target_fs: float | None) -> tuple[np.ndarray, float]:
    if target_fs is not None and not np.isclose(fs, target_fs, rtol=0.0, atol=1e-6):
        return resample(signal, fs, target_fs), float(target_fs)
    return np.asarray(signal, dtype=np.float32), float(fs)


def read_wfdb(
    path: str | Path,
    *,
    target_fs: float | None = None,
    channels: Sequence[int] | None = None,
) -> tuple[np.ndarray, float]:
    """Read a WFDB record as ``((leads, T) float32 mV, fs)``.

    ``path`` is the record name with or without ``.hea``/``.dat``; ``channels``
    selects signal indices (default all, e.g. PTB has 12 leads + 3 Frank leads);
    ``target_fs`` resamples to that rate, otherwise the record's own rate is kept
    and returned. Missing samples stay NaN (the preprocessing zeroes them).
    Corrupt or unreadable records raise :class:`~jaxecg.errors.DataError` naming the record.
    """
    with warnings.catch_warnings():
        # wfdb's import-time pandas calls warn about pandas' own deprecations, not ours.
        warnings.filterwarnings("ignore", module=r"wfdb\.")
        import wfdb  # deferred: importing wfdb pulls in pandas and matplotlib

    record = Path(path)
    if record.suffix in _WFDB_SUFFIXES:
        record = record.with_suffix("")
    if not record.with_suffix(".hea").is_file():
        raise DataError(f"WFDB record {record}: header {record.with_suffix('.hea')} not found")
    try:
        rec = wfdb.rdrecord(str(record), channels=None if channels is None else list(channels))
    except Exception as err:  # noqa: BLE001 -- wfdb raises many types for garbled files
        raise DataError(f"WFDB record {record}: cannot be read ({type(err).__name__}: {err})")
    if rec.p_signal is None or rec.p_signal.ndim != 2 or rec.p_signal.shape[0] == 0:
        raise DataError(f"WFDB record {record}: no physical signal in the record")
    factors = []
    for unit, name in zip(rec.units, rec.sig_name):
        key = str(unit).strip().lower()
        if key not in _TO_MILLIVOLT:
            raise DataError(
                f"WFDB record {record}: channel {name!r} has unit {unit!r}, "
                f"expected one of mV, uV, V"
            )
        factors.append(_TO_MILLIVOLT[key])
    signal = rec.p_signal.T * np.asarray(factors)[:, None]
    return _finish(signal, float(rec.fs), target_fs)


def read_array(
    path: str | Path,
    *,
    fs: float | None = None,
    target_fs: float | None = None,
) -> tuple[np.ndarray, float]:
    """Read a ``.npy`` or ``.npz`` ECG as ``((leads, T) float32 mV, fs)``.

    A ``.npz`` holds the signal under ``signal`` (or as its only array) and may
    store its rate under ``fs``; a ``.npy`` holds only the signal, so ``fs`` must
    be given. A stored rate that disagrees with ``fs`` is an error. Arrays must
    already be ``(leads, T)`` in millivolts.
    """
    path = Path(path)
    stored_fs: float | None = None
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                keys = [k for k in data.files if k != "fs"]
                key = "signal" if "signal" in data.files else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise DataError(f"expected a 'signal' array, found {data.files}")
                signal = np.asarray(data[key])
                if "fs" in data.files:
                    stored_fs = float(data["fs"])
        elif path.suffix == ".npy":
            signal = np.load(path, allow_pickle=False)
        else:
            raise DataError(f"expected a .npy or .npz file, got suffix {path.suffix!r}")
    except (OSError, ValueError, EOFError) as err:  # DataError included: one message per file
        raise DataError(f"array record {path}: cannot be read ({err})") from None
    if stored_fs is not None and fs is not None and not np.isclose(stored_fs, fs):
        raise DataError(f"array record {path}: stores fs={stored_fs:g} Hz but fs={fs:g} was given")
    rate = stored_fs if stored_fs is not None else fs
    if rate is None:
        raise DataError(f"array record {path}: no sampling rate stored; pass fs=")
    if signal.ndim != 2 or not np.issubdtype(signal.dtype, np.number):
        raise DataError(
            f"array record {path}: expected a numeric (leads, T) array, "
            f"got shape {signal.shape} dtype {signal.dtype}"
        )
    if signal.shape[0] > signal.shape[1]:
        raise DataError(
            f"array record {path}: shape {signal.shape} has more leads than samples; it looks "
            "transposed (T, leads): store it as (leads, T), e.g. signal.T"
        )
    return _finish(signal, rate, target_fs)


def read_record(
    path: str | Path,
    *,
    fs: float | None = None,
    target_fs: float | None = None,
    channels: Sequence[int] | None = None,
) -> tuple[np.ndarray, float]:
    """Read any supported record by its suffix (``.npy``/``.npz`` or WFDB).

    ``fs`` is only used for arrays without a stored rate; ``channels`` selects
    leads (for arrays: rows). Returns ``((leads, T) float32 mV, fs)``.
    """
    path = Path(path)
    if path.suffix in (".npy", ".npz"):
        signal, rate = read_array(path, fs=fs, target_fs=target_fs)
        if channels is not None:
            channels = list(channels)
            if channels and not all(0 <= c < signal.shape[0] for c in channels):
                raise DataError(
                    f"array record {path}: channels {channels} out of range for "
                    f"{signal.shape[0]} leads"
                )
            signal = signal[channels]
        return signal, rate
    return read_wfdb(path, target_fs=target_fs, channels=channels)
