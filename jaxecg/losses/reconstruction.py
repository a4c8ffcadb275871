"""The MAE's reconstruction loss (MSE over all patches + NCC regulariser) and the NCC metric.

Layouts: patches ``(B, L, p*q*C)``; signals ``(..., T)`` with time on the last axis
(the MAE passes images ``(B, C, leads, T)``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MAELoss(NamedTuple):
    """``loss = (1 - ncc_weight) * mse + ncc_weight * (1 - ncc)``; all scalars."""

    loss: jax.Array
    mse: jax.Array
    ncc: jax.Array


def zero_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``(x - mean) / sqrt(var + eps)`` over the last axis, with the UNBIASED variance.

    The reference's ``LitMAE.norm`` / NCC normalisation (torch ``var`` defaults to n-1).
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True, ddof=1)
    return (x - mean) / jnp.sqrt(var + eps)


def ncc(signals: jax.Array, signals_hat: jax.Array) -> jax.Array:
    """Zero-normalised cross-correlation, averaged over every signal of ``(..., T)``.

    ``sum_t(zn(a) * zn(b)) / (T - 1)`` per signal (1 iff equal up to a positive scale),
    then the mean over all leading axes (the reference divides by ``B*C*H``).
    """
    if signals.shape != signals_hat.shape:
        raise ValueError(f"ncc needs equal shapes, got {signals.shape} and {signals_hat.shape}")
    length = signals.shape[-1]
    cross = jnp.sum(zero_normalize(signals) * zero_normalize(signals_hat), axis=-1) / (length - 1)
    return jnp.mean(cross)


def norm_pix_target(target: jax.Array) -> jax.Array:
    """Per-patch ``(t - mean) / sqrt(var + 1e-6)`` of ``(B, L, P)`` patches, unbiased variance."""
    return zero_normalize(target, eps=1e-6)


def mae_loss(
    pred: jax.Array,
    target: jax.Array,
    imgs: jax.Array,
    imgs_hat: jax.Array,
    *,
    ncc_weight: float,
    norm_pix_loss: bool = False,
) -> MAELoss:
    """The reference MAE loss.

    ``pred``/``target``: ``(B, L, P)`` predicted and true patches (``target`` raw; it is
    normalised here when ``norm_pix_loss``). ``imgs``/``imgs_hat``: the raw input and
    ``unpatchify(pred)``, ``(..., T)``. The MSE is taken over ALL patches (not only the
    masked ones) and the NCC always compares the raw signals, as the reference does.
    """
    if norm_pix_loss:
        target = norm_pix_target(target)
    mse = jnp.mean((pred - target) ** 2)
    corr = ncc(imgs, imgs_hat)
    return MAELoss(loss=(1.0 - ncc_weight) * mse + ncc_weight * (1.0 - corr), mse=mse, ncc=corr)
