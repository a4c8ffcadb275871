"""Distributions and invariants of the ECG and CMR augmentations (jit + vmap, per-sample keys)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxecg.data import augment_cmr as ac
from jaxecg.data import augment_ecg as ae

N_DRAWS = 4000


def per_sample(fn, x, n=N_DRAWS, seed=0):
    """Apply ``fn(key, x)`` to ``n`` copies of ``x`` with independent keys (jit + vmap)."""
    keys = jax.random.split(jax.random.key(seed), n)
    return np.asarray(jax.jit(jax.vmap(fn, in_axes=(0, None)))(keys, x))


# ---------------------------------------------------------------- ECG


def test_rescale_and_jitter_distributions():
    scales = jnp.array([0.0, 0.5, 1.0, 4.0])
    x = jnp.broadcast_to(scales[:, None], (4, 64))

    def draw(key, signal):
        k1, k2 = jax.random.split(key)
        return ae.rescale(k1, jnp.ones((12, 8)), 0.5), ae.jitter(k2, signal, 0.25, 0.6)

    keys = jax.random.split(jax.random.key(0), 2000)
    rescaled, jittered = jax.jit(jax.vmap(draw, in_axes=(0, None)))(keys, x)
    factor = np.asarray(rescaled[:, 0, 0])
    assert np.all(np.asarray(rescaled) == factor[:, None, None])  # one scalar per sample
    assert factor.mean() == pytest.approx(1.0, abs=0.04)
    assert factor.std() == pytest.approx(0.5, abs=0.03)
    noise = np.asarray(jittered) - np.asarray(x)
    np.testing.assert_array_equal(noise[:, 0], 0.0)  # a zero signal gets no noise
    std = noise.transpose(1, 0, 2).reshape(4, -1).std(axis=1)
    # Multiplicative: the noise std is amplitude * sigma * |x|.
    np.testing.assert_allclose(std[1:] / np.asarray(scales[1:]), 0.6 * 0.25, rtol=0.03)
    assert abs(noise[:, 3].mean()) < 0.01 * 4.0


def test_ft_surrogate_keeps_amplitude_spectrum_and_realness():
    n = 301
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(12, n)).astype(np.float32))
    out = per_sample(lambda k, s: ae.ft_surrogate(k, s, 0.1, prob=0.5), x, n=400)
    assert out.dtype == np.float32
    changed = np.abs(out - np.asarray(x)).max(axis=(1, 2)) > 1e-3
    assert changed.mean() == pytest.approx(0.5, abs=0.08)
    spec_x = np.fft.fft(np.asarray(x, np.float64))
    cross_x = spec_x[0] * np.conj(spec_x[5])
    for y in out[changed][:5]:
        spec_y = np.fft.fft(y.astype(np.float64))
        np.testing.assert_allclose(np.abs(spec_y), np.abs(spec_x), atol=1e-3 * np.abs(spec_x).max())
        # One phase for all leads: cross-lead phase differences are unchanged.
        cross_y = spec_y[0] * np.conj(spec_y[5])
        np.testing.assert_allclose(cross_y, cross_x, atol=1e-3 * np.abs(cross_x).max())
        # Phase shifts lie in [0, 2π·0.1) on the positive frequencies.
        shift = np.angle(spec_y[0, 1 : n // 2] / spec_x[0, 1 : n // 2]) % (2 * np.pi)
        assert shift.max() < 2 * np.pi * 0.1 + 1e-3
    # The reference formula in float64 (full complex FFT, real part) with the same phase.
    key = jax.random.key(9)
    phase = np.asarray(ae.surrogate_phase(jax.random.split(key)[1], n), np.float64)
    expected = np.real(np.fft.ifft(spec_x * np.exp(2j * np.pi * 0.1 * phase)))
    np.testing.assert_allclose(ae.ft_surrogate(key, x, 0.1, prob=1.0), expected, atol=2e-5)
    for length in (8, 9):
        phase = np.asarray(ae.surrogate_phase(jax.random.key(3), length))
        assert phase.shape == (length,) and phase[0] == 0
        assert length % 2 or phase[length // 2] == 0  # Nyquist bin untouched
        np.testing.assert_array_equal(phase[1:][::-1], -phase[1:])  # φ[n-k] = -φ[k]
        assert np.all((phase[1 : (length + 1) // 2] >= 0) & (phase[1 : (length + 1) // 2] < 1))


def test_crop_starts_in_the_reference_range():
    length, steps = 300, 250
    x = jnp.broadcast_to(jnp.arange(length, dtype=jnp.float32), (12, length))
    out = per_sample(lambda k, s: ae.crop(k, s, steps, train=True), x, n=3000)
    starts = out[:, 0, 0].astype(int)
    np.testing.assert_array_equal(
        out, np.broadcast_to(starts[:, None, None] + np.arange(steps), out.shape)
    )
    # numpy randint(0, T - L): the upper bound is excluded.
    assert set(starts) == set(range(length - steps))
    np.testing.assert_array_equal(
        ae.crop(jax.random.key(0), x[:, :steps], steps, train=True), x[:, :steps]
    )
    with pytest.raises(ValueError, match="crop to 400 samples, but the signal has only 300"):
        ae.crop(jax.random.key(0), x, 400, train=True)


def test_ecg_augment_eval_is_deterministic_and_train_is_per_sample():
    cfg = ae.ECGAugmentConfig.preset("finetune", time_steps=250, augment_rate=0.5)
    assert (cfg.ft_surr_phase_noise, cfg.jitter_sigma) == (0.075, 0.2)
    rng = np.random.default_rng(1)
    batch = jnp.asarray(rng.normal(size=(6, 12, 300)).astype(np.float32))
    evaluate = jax.jit(functools.partial(ae.ecg_augment_batch, cfg=cfg, train=False))
    a, b = evaluate(jax.random.key(0), batch), evaluate(jax.random.key(1), batch)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, batch[..., :250])
    # 200 copies of one sample: each gets its own key, half of them the augmentations.
    copies = jnp.broadcast_to(batch[0], (200, 12, 300))
    train = jax.jit(functools.partial(ae.ecg_augment_batch, cfg=cfg, train=True))
    out = np.asarray(train(jax.random.key(5), copies))
    assert out.shape == (200, 12, 250)
    plain = np.all(out == np.asarray(batch[0, :, :250]), axis=(1, 2))
    assert plain.mean() == pytest.approx(0.5, abs=0.12)
    augmented = out[~plain]
    assert len({row.tobytes() for row in augmented}) == len(augmented)


# ---------------------------------------------------------------- CMR


def ramp_image(height: int = 32, width: int = 32) -> jnp.ndarray:
    """Channel 0 = row position, channel 1 = column position (in [0, 1]), channel 2 = 0.5."""
    rows = (jnp.arange(height) + 0.5) / height
    cols = (jnp.arange(width) + 0.5) / width
    return jnp.stack(
        [
            jnp.broadcast_to(rows[:, None], (height, width)),
            jnp.broadcast_to(cols[None, :], (height, width)),
            jnp.full((height, width), 0.5),
        ],
        axis=-1,
    )


def test_hflip_probability_and_result():
    x = ramp_image()
    out = per_sample(lambda k, im: ac.hflip(k, im, 0.5), x, n=1000)
    flipped = np.all(out == np.asarray(x[:, ::-1]), axis=(1, 2, 3))
    kept = np.all(out == np.asarray(x), axis=(1, 2, 3))
    assert np.all(flipped ^ kept)
    assert flipped.mean() == pytest.approx(0.5, abs=0.06)


def test_rotation_is_nearest_neighbour_with_zero_fill():
    x = ramp_image() + 0.1
    np.testing.assert_array_equal(ac.rotate(jax.random.key(0), x, 0.0), x)
    out = per_sample(lambda k, im: ac.rotate(k, im, 45.0), x, n=200)
    values = set(np.unique(np.asarray(x)).tolist()) | {0.0}
    assert set(np.unique(out).tolist()) <= values
    centre = out[:, 15:17, 15:17]  # the centre stays near the centre under any rotation
    assert np.all(np.abs(centre[..., :2] - 0.6) < 0.1)
    corners_zero = (out[:, 0, 0] == 0).all(axis=-1)
    assert 0.2 < corners_zero.mean() < 1.0  # large angles push corners outside


def test_colour_jitter_factors_and_range():
    x = ramp_image() * 0.5 + 0.25
    grey = jnp.broadcast_to(x[..., :1], x.shape)

    def draw(key, image):
        k1, k2, k3 = jax.random.split(key, 3)
        return (
            ac.colour_jitter(k1, image, 0.5, 0.0, 0.0),
            ac.colour_jitter(k2, grey, 0.0, 0.0, 0.25),
            ac.colour_jitter(k3, ramp_image()),
        )

    keys = jax.random.split(jax.random.key(0), 300)
    bright, saturated, full = (np.asarray(a) for a in jax.jit(jax.vmap(draw, (0, None)))(keys, x))
    ratio = bright[:, 10, 10, 0] / float(x[10, 10, 0])
    np.testing.assert_allclose(
        bright, np.clip(ratio[:, None, None, None] * np.asarray(x), 0, 1), rtol=1e-5
    )
    assert ratio.min() >= 0.5 and ratio.max() <= 1.5
    assert ratio.mean() == pytest.approx(1.0, abs=0.05)
    # A grey image has no saturation to change.
    np.testing.assert_allclose(saturated, np.broadcast_to(grey, saturated.shape), atol=1e-3)
    assert full.min() >= 0.0 and full.max() <= 1.0
    assert full.std(axis=0).mean() > 0.01


def test_random_resized_crop_area_and_aspect():
    x = ramp_image(40, 40)
    out = per_sample(lambda k, im: ac.random_resized_crop(k, im, 20), x, n=300)
    assert out.shape == (300, 20, 20, 3)
    # Linear ramps survive bilinear resampling, so the crop box can be read back.
    h = (out[:, -1, 10, 0] - out[:, 0, 10, 0]) * 20 / 19 * 40
    w = (out[:, 10, -1, 1] - out[:, 10, 0, 1]) * 20 / 19 * 40
    area = h * w / 1600
    assert area.min() > 0.6 * 0.85 and area.max() < 1.0 * 1.1
    assert (w / h).min() > 0.75 * 0.85 and (w / h).max() < 4 / 3 * 1.15
    top = out[:, 0, 10, 0] * 40
    assert top.min() >= 0 and (top + h).max() <= 40 * 1.05
    np.testing.assert_allclose(ac.resize(jnp.full((40, 30, 3), 0.3), 20), 0.3, atol=1e-6)


def test_contrastive_views_and_finetune_view():
    cfg = ac.CMRAugmentConfig(img_size=16, augmentation_rate=0.5)
    image = ramp_image()
    plain = np.asarray(jax.jit(lambda im: ac.resize(im, 16))(image))
    keys = jax.random.split(jax.random.key(0), 200)
    v1, v2 = jax.jit(jax.vmap(lambda k, im: ac.cmr_contrastive_views(k, im, cfg), (0, None)))(
        keys, image
    )
    assert v1.shape == v2.shape == (200, 16, 16, 3)
    v1_plain = np.all(np.abs(np.asarray(v1) - plain) < 1e-6, axis=(1, 2, 3))
    v2_plain = np.all(np.abs(np.asarray(v2) - plain) < 1e-6, axis=(1, 2, 3))
    assert not v1_plain.any()  # view 1 is always augmented
    assert v2_plain.mean() == pytest.approx(0.5, abs=0.12)  # view 2 with augmentation_rate
    images = jnp.stack([image, image[::-1]])
    evaluate = jax.jit(functools.partial(ac.cmr_train_view_batch, cfg=cfg, train=False))
    np.testing.assert_array_equal(
        evaluate(jax.random.key(1), images), evaluate(jax.random.key(2), images)
    )
    np.testing.assert_allclose(evaluate(jax.random.key(1), images)[0], plain, atol=1e-6)
    with pytest.raises(
        ValueError, match=r"expected one \(H, W, C\) image, got shape \(2, 32, 32, 3\)"
    ):
        ac.hflip(jax.random.key(0), images)
