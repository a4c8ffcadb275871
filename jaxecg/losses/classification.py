"""Classification criteria with torch's exact semantics (mean reduction).

``binary_cross_entropy_with_logits`` is ``torch.nn.BCEWithLogitsLoss``;
``cross_entropy`` is ``torch.nn.CrossEntropyLoss`` for integer or probability targets,
with ``label_smoothing`` and a per-class ``class_weight`` (torch's ``weight``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def binary_cross_entropy_with_logits(
    logits: ArrayLike, targets: ArrayLike, *, pos_weight: ArrayLike | None = None
) -> jax.Array:
    """Mean over all ``(B, C)`` elements of the multilabel BCE; ``pos_weight`` is ``(C,)``.

    ``-[pos_weight * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x))]``.
    """
    logits = jnp.asarray(logits)
    targets = jnp.asarray(targets, logits.dtype)
    if logits.shape != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} must match")
    # torch's stable form: log(1 + exp(-|x|)) + max(-x, 0) == -log(sigmoid(x)).
    neg_log_sigmoid = jnp.log1p(jnp.exp(-jnp.abs(logits))) + jnp.maximum(-logits, 0.0)
    if pos_weight is None:
        log_weight = 1.0
    else:
        log_weight = 1.0 + (jnp.asarray(pos_weight, logits.dtype) - 1.0) * targets
    return jnp.mean((1.0 - targets) * logits + log_weight * neg_log_sigmoid)


def cross_entropy(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    label_smoothing: float = 0.0,
    class_weight: ArrayLike | None = None,
) -> jax.Array:
    """Mean softmax cross-entropy of ``(B, C)`` logits, as torch's ``CrossEntropyLoss``.

    ``targets``: ``(B,)`` integer classes or ``(B, C)`` class probabilities.
    Integer targets with ``class_weight`` ``w``: the mean is weighted,
    ``sum_i w[y_i] * nll_i / sum_i w[y_i]``, and the smoothing term
    ``sum_i sum_c -w_c log p_ic`` is divided by the same ``sum_i w[y_i]``.
    Probability targets are smoothed to ``t * (1 - eps) + eps / C`` and averaged over
    ``B`` (not over weights), exactly as torch does.
    """
    logits = jnp.asarray(logits)
    targets = jnp.asarray(targets)
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (B, C), got {logits.shape}")
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    weight = (
        jnp.ones((num_classes,), logits.dtype)
        if class_weight is None
        else jnp.asarray(class_weight, logits.dtype)
    )
    if weight.shape != (num_classes,):
        raise ValueError(f"expected class_weight of shape ({num_classes},), got {weight.shape}")

    if jnp.issubdtype(targets.dtype, jnp.integer):
        if targets.shape != logits.shape[:1]:
            raise ValueError(
                f"expected integer targets of shape {logits.shape[:1]}, got {targets.shape}"
            )
        picked = jnp.take_along_axis(log_probs, targets[:, None], axis=-1)[:, 0]
        target_weight = weight[targets]
        norm = jnp.sum(target_weight)
        nll = -jnp.sum(target_weight * picked) / norm
        if label_smoothing == 0.0:
            return nll
        smooth = -jnp.sum(log_probs * weight) / norm
        return (1.0 - label_smoothing) * nll + (label_smoothing / num_classes) * smooth

    if targets.shape != logits.shape:
        raise ValueError(
            f"expected probability targets of shape {logits.shape}, got {targets.shape}"
        )
    probs = targets.astype(logits.dtype)
    if label_smoothing:
        probs = probs * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -jnp.sum(log_probs * probs * weight) / logits.shape[0]
