"""Per-sample token masking by argsort of uniform noise (MAE pretraining and fine-tuning).

The reference draws ``torch.rand`` inside its masking functions; here the noise is an
argument (golden cases pass theirs) and :func:`masking_noise` draws it from a PRNG key.
Token layout: ``(B, L, D)`` in timm's row-major grid order ``lead_row * gw + time_col``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RandomMasking(NamedTuple):
    """Result of :func:`random_masking`.

    ``x_masked (B, len_keep, D)`` kept tokens in SHUFFLED order; ``mask (B, L)`` float,
    1 = removed, in original order; ``ids_restore``/``ids_shuffle`` ``(B, L)`` int.
    """

    x_masked: jax.Array
    mask: jax.Array
    ids_restore: jax.Array
    ids_shuffle: jax.Array


class BlockwiseMasking(NamedTuple):
    """Result of :func:`blockwise_masking`.

    ``x_masked (B, keep_c * keep_t, D)``; ``ids_keep_c (B, keep_c)`` kept lead rows and
    ``ids_keep_t (B, keep_t)`` kept time columns, both in shuffled (argsort) order.
    """

    x_masked: jax.Array
    ids_keep_c: jax.Array
    ids_keep_t: jax.Array


def num_kept(length: int, ratio: float) -> int:
    """``int(length * (1 - ratio))`` in Python floats, as the reference (300 at 0.8 -> 59)."""
    return int(length * (1 - ratio))


def masking_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform ``[0, 1)`` float32 noise, the stand-in for the reference's ``torch.rand``."""
    return jax.random.uniform(key, shape, dtype=jnp.float32)


def _check_noise(noise: jax.Array, expected: tuple[int, int], what: str) -> None:
    if tuple(noise.shape) != expected:
        raise ValueError(f"expected {what} noise of shape {expected}, got {tuple(noise.shape)}")


def random_masking(x: jax.Array, noise: jax.Array, mask_ratio: float) -> RandomMasking:
    """Keep the ``num_kept(L, mask_ratio)`` tokens with the smallest noise, per sample.

    ``x (B, L, D)``, ``noise (B, L)``. Even at ratio 0 the kept tokens come out permuted
    by ``argsort(noise)``, as in the reference.
    """
    batch, length, _ = x.shape
    noise = jnp.asarray(noise)
    _check_noise(noise, (batch, length), "random-masking")
    keep = num_kept(length, mask_ratio)
    # Ascending: small noise is kept. Stable sort; golden noise rows have distinct values.
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    x_masked = jnp.take_along_axis(x, ids_shuffle[:, :keep, None], axis=1)
    shuffled_mask = jnp.concatenate(
        [jnp.zeros((batch, keep), jnp.float32), jnp.ones((batch, length - keep), jnp.float32)],
        axis=1,
    )
    mask = jnp.take_along_axis(shuffled_mask, ids_restore, axis=1)
    return RandomMasking(x_masked, mask, ids_restore, ids_shuffle)


def blockwise_masking(
    x: jax.Array,
    grid_size: tuple[int, int],
    noise_c: jax.Array,
    noise_t: jax.Array,
    mask_c_ratio: float,
    mask_t_ratio: float,
) -> BlockwiseMasking:
    """Drop whole lead rows, then whole time columns, of the ``(gh, gw)`` token grid.

    ``x (B, gh*gw, D)``; ``noise_c (B, gh)`` picks the ``num_kept(gh, mask_c_ratio)`` rows,
    ``noise_t (B, gw)`` the ``num_kept(gw, mask_t_ratio)`` columns (smallest noise kept).
    Output tokens are ordered (kept row, kept column), rows and columns in argsort order.
    """
    batch, length, dim = x.shape
    grid_h, grid_w = grid_size
    if length != grid_h * grid_w:
        raise ValueError(f"expected {grid_h * grid_w} tokens for grid {grid_size}, got {length}")
    noise_c, noise_t = jnp.asarray(noise_c), jnp.asarray(noise_t)
    _check_noise(noise_c, (batch, grid_h), "lead (row)")
    _check_noise(noise_t, (batch, grid_w), "time (column)")
    keep_c, keep_t = num_kept(grid_h, mask_c_ratio), num_kept(grid_w, mask_t_ratio)
    ids_keep_c = jnp.argsort(noise_c, axis=1)[:, :keep_c]
    ids_keep_t = jnp.argsort(noise_t, axis=1)[:, :keep_t]
    grid = x.reshape(batch, grid_h, grid_w, dim)
    grid = jnp.take_along_axis(grid, ids_keep_c[:, :, None, None], axis=1)
    grid = jnp.take_along_axis(grid, ids_keep_t[:, None, :, None], axis=2)
    return BlockwiseMasking(grid.reshape(batch, keep_c * keep_t, dim), ids_keep_c, ids_keep_t)
