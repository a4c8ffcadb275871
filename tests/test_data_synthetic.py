"""Built-in synthetic datasets: deterministic, physiologically consistent, classes separable."""

import numpy as np
from scipy.signal import find_peaks

from jaxecg.data import (
    CMR_CLASSES,
    ECG_CLASSES,
    SyntheticCMRSource,
    preprocess_ecg,
    synthetic_cmr,
    synthetic_ecg,
    synthetic_ecg_record,
)


def rr_intervals(lead_ii: np.ndarray, fs: float = 500.0) -> np.ndarray:
    """R-R intervals (s) from R peaks: prominent maxima at least 250 ms apart."""
    peaks, _ = find_peaks(lead_ii, prominence=0.5 * np.ptp(lead_ii), distance=int(0.25 * fs))
    return np.diff(peaks) / fs


def test_ecg_is_deterministic_per_index_and_balanced():
    data = synthetic_ecg(8, seed=3)
    assert data["ecg"].shape == (8, 12, 5000) and data["ecg"].dtype == np.float32
    np.testing.assert_array_equal(data["label"], np.arange(8) % len(ECG_CLASSES))
    # Record 5 does not depend on how many records were asked for.
    np.testing.assert_array_equal(synthetic_ecg_record(5, seed=3)[0], data["ecg"][5])
    assert not np.array_equal(synthetic_ecg_record(5, seed=4)[0], data["ecg"][5])
    # Clean mode looks like preprocessed data: group-normalised.
    for lo, hi in [(0, 3), (3, 6), (6, 12)]:
        assert abs(data["ecg"][0, lo:hi].mean()) < 1e-4
        assert abs(data["ecg"][0, lo:hi].std() - 1) < 1e-4


def test_ecg_leads_obey_einthoven_and_goldberger():
    raw, _ = synthetic_ecg_record(2, seed=0, raw=True)
    assert raw.shape == (12, 5000) and np.isfinite(raw).all()
    lead_i, lead_ii = raw[0].astype(np.float64), raw[1].astype(np.float64)
    np.testing.assert_allclose(raw[2], lead_ii - lead_i, atol=1e-6)
    np.testing.assert_allclose(raw[3], -(lead_i + lead_ii) / 2, atol=1e-6)
    np.testing.assert_allclose(raw[4], lead_i - lead_ii / 2, atol=1e-6)
    np.testing.assert_allclose(raw[5], lead_ii - lead_i / 2, atol=1e-6)
    # Millivolt scale: R peaks around 1 mV in lead II, larger in the chest leads.
    assert 0.4 < np.ptp(raw[1]) < 4.0 and np.ptp(raw[6:]).max() > np.ptp(raw[1])


def test_ecg_classes_differ_in_rate_and_rhythm():
    rates, irregularity = {}, {}
    for label in range(len(ECG_CLASSES)):
        rrs = [rr_intervals(synthetic_ecg_record(label + 4 * k, seed=1)[0][1]) for k in range(3)]
        rates[label] = [60.0 / rr.mean() for rr in rrs]
        irregularity[label] = np.mean([rr.std() / rr.mean() for rr in rrs])
    assert all(55 <= r <= 95 for r in rates[0]) and min(rates[1]) >= 105
    assert irregularity[2] > 3 * max(irregularity[0], irregularity[1], irregularity[3])

    # ST elevation: the segment after the QRS sits higher in V2 than in a sinus record.
    def st_level(index):
        x = synthetic_ecg_record(index, seed=1)[0]
        peaks, _ = find_peaks(x[1], prominence=0.5 * np.ptp(x[1]), distance=125)
        return np.mean(
            [x[7, p + 40 : p + 60].mean() - x[7, p - 60 : p - 40].mean() for p in peaks[:-1]]
        )

    assert st_level(3) > st_level(0) + 0.3


def test_raw_ecg_goes_through_the_reference_preprocessing():
    raw, _ = synthetic_ecg_record(1, seed=9, length=5200, raw=True)
    out = preprocess_ecg(raw)
    assert out.shape == (12, 5000) and np.isfinite(out).all()


def test_cmr_frames_and_classes():
    data = synthetic_cmr(6, seed=2, size=64)
    assert data["image"].shape == (6, 64, 64, 3) and data["image"].dtype == np.float32
    assert data["image"].min() >= 0 and data["image"].max() <= 1
    np.testing.assert_array_equal(data["label"], np.arange(6) % len(CMR_CLASSES))
    source = SyntheticCMRSource(6, seed=2, size=64)
    np.testing.assert_array_equal(source[4]["image"], data["image"][4])
    # Blood-pool area (bright pixels near the centre): dilated > normal > hypertrophic.
    centre = data["image"][:, 16:48, 16:48, 0]
    pool = (centre > 0.7).sum(axis=(1, 2))
    for k in (0, 3):
        assert pool[k + 1] > pool[k] > pool[k + 2]
