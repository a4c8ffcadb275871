"""ECG augmentations as pure JAX functions of ``(key, x)`` (docs/reference.md#ecg-augmentations).

Each function takes ONE sample ``x`` of shape ``(leads, T)`` (or ``(1, leads, T)``;
any leading axes are treated as part of the sample) and a PRNG key, and is
``jit``/``vmap``-safe: ``jax.vmap(fn)(keys, batch)`` augments a batch with
per-sample keys. :func:`ecg_augment_batch` does exactly that.

Formulas are the reference's (MMCL-ECG-CMR ``utils/augmentations.py``):
crop to ``time_steps`` with a random start in training (``randint(0, T - L)``,
upper bound excluded) and start 0 otherwise; FT-surrogate with one phase
``u·2π·magnitude``, ``u ~ U[0, 1)``, shared by all leads and Hermitian so the
signal stays real; multiplicative jitter ``x + amplitude·x·N(0, σ)``; rescaling
``x·N(1, σ)`` with one scalar per sample. The reference evaluates the FFT in
float64; here it runs in float32 (x64 is off in JAX by default), a ~1e-6
relative difference that is far below the augmentation noise.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxecg.config import Config


@dataclasses.dataclass(frozen=True)
class ECGAugmentConfig(Config):
    """Per-sample ECG augmentation settings; presets ``pretrain`` and ``finetune``.

    ``augment_rate`` is the probability that a training sample gets the
    augmentations at all (otherwise it is only cropped at start 0, like in
    evaluation) — the reference's ``eval_train_augment_rate``.
    """

    time_steps: int = 2500
    ft_surr_prob: float = 0.5
    ft_surr_phase_noise: float = 0.1
    jitter_sigma: float = 0.25
    jitter_amplitude: float = 0.6
    rescaling_sigma: float = 0.5
    augment_rate: float = 1.0

    PRESETS: ClassVar[dict[str, dict]] = {
        "pretrain": {"ft_surr_phase_noise": 0.1, "jitter_sigma": 0.25},
        "finetune": {"ft_surr_phase_noise": 0.075, "jitter_sigma": 0.2},
    }


def crop(key: jax.Array, x: jax.Array, time_steps: int, *, train: bool) -> jax.Array:
    """Crop ``(..., T)`` to ``(..., time_steps)``; random start in training, 0 otherwise.

    The training start is ``randint(0, T - time_steps)`` with the upper bound
    excluded, as numpy's ``randint`` in the reference (0 when ``T == time_steps``).
    """
    length = x.shape[-1]
    if time_steps > length:
        raise ValueError(f"crop to {time_steps} samples, but the signal has only {length}")
    if not train or length == time_steps:
        return x[..., :time_steps]
    start = jax.random.randint(key, (), 0, length - time_steps)
    return jax.lax.dynamic_slice_in_dim(x, start, time_steps, axis=x.ndim - 1)


def surrogate_phase(key: jax.Array, n: int) -> jax.Array:
    """Hermitian random phase ``(n,)`` in cycles: ``φ[k] = u_k``, ``φ[n-k] = -u_k``.

    DC (and Nyquist for even ``n``) get phase 0, so ``ifft(fft(x)·exp(2πi·m·φ))``
    of a real ``x`` is real.
    """
    half = (n - 1) // 2
    u = jax.random.uniform(key, (half,))
    nyquist = jnp.zeros((1 - n % 2,))
    return jnp.concatenate([jnp.zeros((1,)), u, nyquist, -u[::-1]])


def ft_surrogate(key: jax.Array, x: jax.Array, magnitude: float, prob: float = 1.0) -> jax.Array:
    """With probability ``prob``, shift the Fourier phases of ``(..., T)`` by ``2π·magnitude·φ``.

    One phase vector for the whole sample (all leads), so inter-lead timing is kept;
    the amplitude spectrum of every lead is unchanged.
    """
    if not 0.0 <= magnitude <= 1.0:
        raise ValueError(f"FT-surrogate phase magnitude must be in [0, 1], got {magnitude}")
    k_apply, k_phase = jax.random.split(key)
    n = x.shape[-1]
    # The Hermitian phase is fixed by its non-negative frequencies, so the real FFT pair
    # computes real(ifft(fft(x)·e^{2πi·m·φ})) exactly, at half the cost.
    phase = surrogate_phase(k_phase, n)[: n // 2 + 1]
    spectrum = jnp.fft.rfft(x, axis=-1)
    shifted = spectrum * jnp.exp(2j * jnp.pi * magnitude * phase)
    surrogate = jnp.fft.irfft(shifted, n=n, axis=-1).astype(x.dtype)
    return jnp.where(jax.random.uniform(k_apply) < prob, surrogate, x)


def jitter(key: jax.Array, x: jax.Array, sigma: float, amplitude: float = 0.6) -> jax.Array:
    """Multiplicative noise ``x + amplitude·x·N(0, sigma)``, independent per element."""
    noise = sigma * jax.random.normal(key, x.shape, x.dtype)
    return x + amplitude * x * noise


def rescale(key: jax.Array, x: jax.Array, sigma: float = 0.5) -> jax.Array:
    """Multiply the whole sample by one factor drawn from ``N(1, sigma)``."""
    return x * (1.0 + sigma * jax.random.normal(key, (), x.dtype))


def ecg_augment(key: jax.Array, x: jax.Array, cfg: ECGAugmentConfig, train: bool) -> jax.Array:
    """The reference's load-time transform of one sample ``(..., leads, T)`` → ``(..., leads, L)``.

    ``train=False``: crop at start 0 (deterministic, ``key`` unused).
    ``train=True``: with probability ``cfg.augment_rate`` random crop → FT-surrogate
    (``cfg.ft_surr_prob``) → jitter → rescale; otherwise the evaluation crop.
    ``train`` must be a Python bool (it selects the traced program).
    """
    if not train:
        return crop(key, x, cfg.time_steps, train=False)
    k_rate, k_crop, k_ft, k_jit, k_scale = jax.random.split(key, 5)
    y = crop(k_crop, x, cfg.time_steps, train=True)
    y = ft_surrogate(k_ft, y, cfg.ft_surr_phase_noise, cfg.ft_surr_prob)
    y = jitter(k_jit, y, cfg.jitter_sigma, cfg.jitter_amplitude)
    y = rescale(k_scale, y, cfg.rescaling_sigma)
    if cfg.augment_rate >= 1.0:
        return y
    plain = crop(k_crop, x, cfg.time_steps, train=False)
    return jnp.where(jax.random.uniform(k_rate) < cfg.augment_rate, y, plain)


def ecg_augment_batch(
    key: jax.Array, batch: jax.Array, cfg: ECGAugmentConfig, train: bool
) -> jax.Array:
    """:func:`ecg_augment` over a batch ``(B, ..., leads, T)`` with one key per sample."""
    keys = jax.random.split(key, batch.shape[0])
    return jax.vmap(lambda k, x: ecg_augment(k, x, cfg, train))(keys, batch)
