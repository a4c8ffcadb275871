"""Built-in synthetic datasets: realistic 12-lead ECGs and CMR-like frames, no download.

Every record is a pure function of ``(seed, index)`` (its own
``numpy.random.default_rng([seed, index])``), so datasets are deterministic,
can be generated lazily in any order, and the first ``n`` records do not depend
on the dataset size.

ECG model: a heart dipole in 3-D (x left, y inferior, z anterior) made of
Gaussian P, Q, R, S, T waves per beat (a vectorcardiogram), projected onto the
limb leads I and II and the precordial leads V1–V6; III, aVR, aVL, aVF follow
from Einthoven's and Goldberger's relations, so inter-lead structure is exact.
Classes (:data:`ECG_CLASSES`) differ in rhythm and morphology:
0 sinus rhythm (55–95 bpm), 1 sinus tachycardia (110–160 bpm), 2 atrial
fibrillation (irregular RR, no P wave, 4–8 Hz fibrillatory waves), 3 anterior
ST elevation (sinus, raised ST segment towards V1–V4, deeper Q).

CMR model: a short-axis cine-like frame — body ellipse, bright left-ventricular
blood pool inside a dark myocardial ring, bright right-ventricular crescent —
with classes (:data:`CMR_CLASSES`) 0 normal, 1 dilated (large cavity, thin
wall), 2 hypertrophic (small cavity, thick wall).
"""

from __future__ import annotations

import numpy as np

from jaxecg.data.preprocess import normalise_groups

ECG_CLASSES = ("sinus", "tachycardia", "atrial_fibrillation", "st_elevation")
CMR_CLASSES = ("normal", "dilated", "hypertrophic")
LEAD_NAMES = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

# Wave table: offset from the R peak (s; T scaled by sqrt(RR) per Bazett), width (s),
# amplitude (mV) and dipole direction (x left, y inferior, z anterior).
_WAVES = {
    "P": (-0.16, 0.022, 0.15, (0.55, 0.80, 0.25)),
    "Q": (-0.028, 0.008, 0.12, (-0.50, -0.20, 0.80)),
    "R": (0.0, 0.011, 1.30, (0.75, 0.55, -0.25)),
    "S": (0.030, 0.010, 0.35, (-0.20, -0.30, -0.90)),
    "T": (0.27, 0.055, 0.32, (0.55, 0.65, -0.10)),
}
# Horizontal-plane directions of V1..V6 (angle from the left axis towards anterior);
# chest electrodes sit closer to the heart, hence their larger gain.
_PRECORDIAL_DEG = (115.0, 95.0, 75.0, 55.0, 30.0, 5.0)
_PRECORDIAL_GAIN = 1.5


def _record_rng(
    index: int, seed: int, num_classes: int, classes: tuple[str, ...]
) -> tuple[np.random.Generator, int]:
    """The record's own generator and its class (classes cycle with the index: balanced)."""
    if not 1 <= num_classes <= len(classes):
        raise ValueError(f"num_classes must be in 1..{len(classes)}, got {num_classes}")
    return np.random.default_rng([seed, index]), index % num_classes


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _beat_times(rng: np.random.Generator, label: int, duration: float) -> np.ndarray:
    if label == 1:
        rr_mean, rr_spread = 60.0 / rng.uniform(110, 160), 0.02
    elif label == 2:
        rr_mean, rr_spread = 60.0 / rng.uniform(70, 130), 0.25
    else:
        rr_mean, rr_spread = 60.0 / rng.uniform(55, 95), 0.03
    # Start one beat before 0 so the record begins mid-cycle, like a real recording.
    times = [-rng.uniform(0.0, rr_mean)]
    while times[-1] < duration + 1.0:
        times.append(times[-1] + rr_mean * (1.0 + rr_spread * rng.uniform(-1.0, 1.0)))
    return np.asarray(times)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A small random rotation of the electrical heart axis (patient anatomy)."""
    out = np.eye(3)
    for axes in ((0, 1), (0, 2), (1, 2)):
        angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
        rot = np.eye(3)
        i, j = axes
        rot[i, i] = rot[j, j] = np.cos(angle)
        rot[i, j], rot[j, i] = -np.sin(angle), np.sin(angle)
        out = rot @ out
    return out


def synthetic_ecg_record(
    index: int,
    *,
    seed: int = 0,
    length: int = 5000,
    fs: float = 500.0,
    num_classes: int = len(ECG_CLASSES),
    raw: bool = False,
) -> tuple[np.ndarray, int]:
    """One synthetic record: ``((12, length) float32, label)``.

    ``raw=True`` gives millivolts with baseline wander and noise, suitable as
    :func:`~jaxecg.data.preprocess.preprocess_ecg` input; ``raw=False`` (default)
    gives a clean, group-normalised signal like the preprocessing's output.
    ``label`` is ``index``-cycled over the first ``num_classes`` classes, so
    classes are balanced.
    """
    rng, label = _record_rng(index, seed, num_classes, ECG_CLASSES)
    t = np.arange(length) / fs
    axis = _rotation(rng, 15.0)
    gain = rng.uniform(0.7, 1.3)
    dipole = np.zeros((3, length))
    beats = _beat_times(rng, label, length / fs)
    for k, beat in enumerate(beats):
        rr = (beats[k + 1] - beat) if k + 1 < len(beats) else beat - beats[k - 1]
        for wave, (offset, width, amp, direction) in _WAVES.items():
            if wave == "P" and label == 2:
                continue
            if wave == "T":
                offset *= np.sqrt(rr)
            if wave == "Q" and label == 3:
                amp *= 3.0
            center = beat + offset
            window = np.abs(t - center) < 6 * width
            shape = amp * np.exp(-0.5 * ((t[window] - center) / width) ** 2)
            dipole[:, window] += np.outer(axis @ _unit(direction), shape)
        if label == 3:
            # ST elevation: a plateau from the J point into the T wave, pointing anterior.
            center, width = beat + 0.14 * np.sqrt(rr), 0.06
            window = np.abs(t - center) < 6 * width
            plateau = 0.30 * np.exp(-0.5 * ((t[window] - center) / width) ** 4)
            dipole[:, window] += np.outer(axis @ _unit((0.1, -0.1, 1.0)), plateau)
    if label == 2:
        freqs = rng.uniform(4.0, 8.0, size=4)
        phases = rng.uniform(0, 2 * np.pi, size=4)
        f_waves = np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None]).sum(0)
        dipole += np.outer(_unit((0.3, 0.5, 0.8)), rng.uniform(0.015, 0.03) * f_waves)
    dipole *= gain
    lead_i = dipole[0]
    lead_ii = 0.5 * dipole[0] + np.sqrt(3) / 2 * dipole[1]
    precordial = [
        _PRECORDIAL_GAIN
        * (np.cos(np.deg2rad(a)) * dipole[0] + 0.2 * dipole[1] + np.sin(np.deg2rad(a)) * dipole[2])
        for a in _PRECORDIAL_DEG
    ]
    # Like an ECG machine: I, II and V1-V6 are measured (with their own noise and, raw,
    # baseline wander); III, aVR, aVL, aVF are derived from I and II.
    measured = np.stack([lead_i, lead_ii, *precordial])
    if raw:
        wander_f = rng.uniform(0.05, 0.5, size=(8, 1))
        wander = rng.uniform(0.05, 0.3, size=(8, 1)) * np.sin(
            2 * np.pi * wander_f * t + rng.uniform(0, 2 * np.pi, size=(8, 1))
        )
        measured = measured + wander + rng.normal(0.0, 0.01, size=measured.shape)
    else:
        measured = measured + rng.normal(0.0, 0.005, size=measured.shape)
    lead_i, lead_ii = measured[0], measured[1]
    limb = [
        lead_i,
        lead_ii,
        lead_ii - lead_i,  # III (Einthoven)
        -(lead_i + lead_ii) / 2,  # aVR (Goldberger)
        lead_i - lead_ii / 2,  # aVL
        lead_ii - lead_i / 2,  # aVF
    ]
    ecg = np.concatenate([np.stack(limb), measured[2:]])
    if not raw:
        ecg = normalise_groups(ecg)
    return ecg.astype(np.float32), label


def synthetic_ecg(
    num: int,
    *,
    seed: int = 0,
    length: int = 5000,
    fs: float = 500.0,
    num_classes: int = len(ECG_CLASSES),
    raw: bool = False,
) -> dict[str, np.ndarray]:
    """``num`` records as ``{"ecg": (num, 12, length) float32, "label": (num,) int32}``."""
    records = [
        synthetic_ecg_record(i, seed=seed, length=length, fs=fs, num_classes=num_classes, raw=raw)
        for i in range(num)
    ]
    return {
        "ecg": np.stack([r[0] for r in records]).reshape(num, 12, length),
        "label": np.asarray([r[1] for r in records], dtype=np.int32),
    }


def synthetic_cmr_record(
    index: int, *, seed: int = 0, size: int = 210, num_classes: int = len(CMR_CLASSES)
) -> tuple[np.ndarray, int]:
    """One CMR-like frame: ``((size, size, 3) float32 in [0, 1], label)``; see module doc."""
    rng, label = _record_rng(index, seed, num_classes, CMR_CLASSES)
    # Cavity radius and wall thickness as fractions of the frame, per class.
    cavity, wall = {0: (0.13, 0.06), 1: (0.20, 0.035), 2: (0.08, 0.11)}[label]
    cavity *= rng.uniform(0.9, 1.1)
    wall *= rng.uniform(0.9, 1.1)
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, size), np.linspace(-0.5, 0.5, size), indexing="ij")
    cy, cx = rng.uniform(-0.05, 0.05, size=2)
    stretch = rng.uniform(0.9, 1.1)
    r = np.hypot((xx - cx) * stretch, (yy - cy) / stretch)
    body = np.hypot(xx / 0.46, yy / 0.38) < 1.0
    image = np.where(body, 0.35, 0.02)
    rv_r = np.hypot(xx - cx + cavity + wall + 0.06, (yy - cy) * 0.8)
    rv = (rv_r < cavity + 0.05) & (r > cavity + wall)
    image = np.where(rv, 0.75, image)
    image = np.where(r < cavity + wall, 0.22, image)
    image = np.where(r < cavity, 0.85, image)
    image = image + rng.normal(0.0, 0.03, size=image.shape)
    # A 3x3 box blur softens the edges like the MRI point-spread function.
    padded = np.pad(image, 1, mode="edge")
    image = sum(padded[i : i + size, j : j + size] for i in range(3) for j in range(3)) / 9.0
    image = np.clip(image * rng.uniform(0.85, 1.15), 0.0, 1.0)
    return np.repeat(image[..., None], 3, axis=-1).astype(np.float32), label


def synthetic_cmr(
    num: int, *, seed: int = 0, size: int = 210, num_classes: int = len(CMR_CLASSES)
) -> dict[str, np.ndarray]:
    """``num`` frames as ``{"image": (num, size, size, 3) float32, "label": (num,) int32}``."""
    records = [
        synthetic_cmr_record(i, seed=seed, size=size, num_classes=num_classes) for i in range(num)
    ]
    return {
        "image": np.stack([r[0] for r in records]).reshape(num, size, size, 3),
        "label": np.asarray([r[1] for r in records], dtype=np.int32),
    }
