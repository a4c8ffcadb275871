"""NT-Xent (SimCLR's normalised-temperature cross-entropy), as the reference's custom
lightly ``NTXentLoss`` without memory bank, optionally with every device's negatives
(docs/reference.md#nt-xent).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxecg.losses.classification import cross_entropy

_TEMPERATURE_EPS = 1e-8  # the reference rejects temperatures this close to zero
_NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default eps


def _l2_normalize(z: jax.Array) -> jax.Array:
    """``F.normalize(z, dim=1)``: ``z / max(||z||, 1e-12)`` row-wise."""
    norm = jnp.sqrt(jnp.sum(jnp.square(z), axis=1, keepdims=True))
    return z / jnp.maximum(norm, _NORMALIZE_EPS)


def _drop_own_column(logits: jax.Array, own: jax.Array) -> jax.Array:
    """Remove column ``own[i]`` from row ``i``: ``(n, m) → (n, m - 1)``, order kept."""
    cols = jnp.arange(logits.shape[1] - 1)[None, :]
    return jnp.take_along_axis(logits, cols + (cols >= own[:, None]), axis=1)


def nt_xent(
    z0: ArrayLike,
    z1: ArrayLike,
    temperature: float = 0.1,
    axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """NT-Xent of two views' projections ``z0, z1`` ``(n, d)`` → ``(loss, logits, labels)``.

    Rows are L2-normalised; with ``m`` the global batch (``n`` times the devices of
    ``axis_name``, or ``n``) the logits ``(2n, 2m - 1)`` are
    ``[[z0·z1ᵀ | z0·z0ᵀ], [z1·z0ᵀ | z1·z1ᵀ]] / temperature`` over local rows and global
    columns, each row without its own sample's column in the same-view block; ``labels``
    ``(2n,)`` = ``arange(n) + rank * n`` twice (the positive's column); the loss is the mean
    cross-entropy.

    ``axis_name``: call inside ``jax.shard_map`` (or ``pmap``) over that mesh axis with the
    batch split across it; the other devices' embeddings are gathered as negatives
    (``all_gather``, gradients flow back to their owners) and the returned loss is averaged
    over the axis, so it equals the single-device loss of the global batch. ``logits`` and
    ``labels`` are this device's rows.

    Raises ``ValueError`` for ``temperature <= 1e-8`` (the reference rejects ``|t| < 1e-8``;
    a negative temperature, which it accepts, would reward dissimilar positives) and for a
    global batch of fewer than 2 samples (the reference returns a meaningless 0 there: no
    negatives exist).
    """
    z0 = jnp.asarray(z0)
    z1 = jnp.asarray(z1)
    if z0.ndim != 2 or z0.shape != z1.shape:
        raise ValueError(
            f"nt_xent expects two (n, d) arrays of the same shape, got {z0.shape} and {z1.shape}"
        )
    if temperature <= _TEMPERATURE_EPS:
        raise ValueError(f"Illegal temperature: {temperature} <= {_TEMPERATURE_EPS}; must be > 0")
    n = z0.shape[0]
    devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
    if n * devices < 2:
        raise ValueError(
            f"nt_xent needs at least 2 samples in the (global) batch for negatives, got "
            f"{n * devices}"
        )

    z0 = _l2_normalize(z0)
    z1 = _l2_normalize(z1)
    if axis_name is None:
        z0_all, z1_all, rank = z0, z1, 0
    else:
        z0_all = jax.lax.all_gather(z0, axis_name, tiled=True)
        z1_all = jax.lax.all_gather(z1, axis_name, tiled=True)
        rank = jax.lax.axis_index(axis_name)

    labels = jnp.arange(n) + rank * n  # each local sample's column in the global batch
    logits_00 = _drop_own_column(z0 @ z0_all.T / temperature, labels)
    logits_01 = z0 @ z1_all.T / temperature
    logits_10 = z1 @ z0_all.T / temperature
    logits_11 = _drop_own_column(z1 @ z1_all.T / temperature, labels)
    logits = jnp.concatenate(
        [
            jnp.concatenate([logits_01, logits_00], axis=1),
            jnp.concatenate([logits_10, logits_11], axis=1),
        ],
        axis=0,
    )
    labels = jnp.tile(labels, 2)

    loss = cross_entropy(logits, labels)
    if axis_name is not None:
        # Equal row counts per device: the mean of local means is the global mean.
        loss = jax.lax.pmean(loss, axis_name)
    return loss, logits, labels
