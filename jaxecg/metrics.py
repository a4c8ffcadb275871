"""Classification metrics for the online classifier and the contrastive task.

SimCLR reports the top-1/top-5 accuracy of NT-Xent's ``(logits, labels)`` (is the positive
among the k most similar candidates?), as torchmetrics' micro-averaged multiclass
``Accuracy(top_k=k)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def top_k_accuracy(logits: ArrayLike, labels: ArrayLike, k: int = 1) -> jax.Array:
    """Fraction of rows of ``logits`` ``(N, C)`` whose integer label ``(N,)`` is in their top k."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (N, C) and integer labels (N,), got {logits.shape} and {labels.shape}"
        )
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"top-k accuracy needs 1 <= k <= C={logits.shape[1]} classes, got k={k}")
    _, top = jax.lax.top_k(logits, k)
    return jnp.mean(jnp.any(top == labels[:, None], axis=1).astype(jnp.float32))
