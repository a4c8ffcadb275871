"""Blocked (online-softmax) attention, a drop-in :data:`~jaxecg.models.vit.AttentionFn`.

The default :func:`~jaxecg.models.vit.softmax_attention` materialises the
``(B, heads, N, N)`` scores; this one walks the keys in blocks and keeps a running max
and denominator per query (the FlashAttention recurrence), so only
``(B, heads, N, block)`` scores exist at a time. Same result up to fp32 rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def blocked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, block_size: int = 128
) -> jax.Array:
    """Softmax attention of ``(B, N, heads, hd)`` q, k, v over key blocks -> ``(B, N, heads, hd)``.

    The keys are split into ``ceil(N / block_size)`` equal blocks (the last one padded
    with keys that get zero weight). Block count is static, so the loop unrolls under
    ``jit``.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if q.shape[0] != k.shape[0] or k.shape != v.shape or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"expected q (B, Nq, heads, hd) and k, v (B, Nk, heads, hd), "
            f"got {q.shape}, {k.shape}, {v.shape}"
        )
    num_keys = k.shape[1]
    num_blocks = -(-num_keys // block_size)
    # Equal blocks as small as the count allows: 301 keys at 128 -> 3 x 101, 2 padded.
    block = -(-num_keys // num_blocks)
    pad = num_blocks * block - num_keys
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    batch, num_queries, heads, head_dim = q.shape
    running_max = jnp.full((batch, heads, num_queries), -jnp.inf, q.dtype)
    denom = jnp.zeros((batch, heads, num_queries), q.dtype)
    acc = jnp.zeros((batch, heads, num_queries, head_dim), q.dtype)
    for i in range(num_blocks):
        start = i * block
        k_blk, v_blk = k[:, start : start + block], v[:, start : start + block]
        # Scale after the product, like timm (q @ k^T) * scale.
        scores = jnp.einsum("bnhd,bmhd->bhnm", q, k_blk) * scale
        if pad and i == num_blocks - 1:
            valid = jnp.arange(block) < block - pad
            scores = jnp.where(valid, scores, -jnp.inf)
        new_max = jnp.maximum(running_max, scores.max(axis=-1))
        probs = jnp.exp(scores - new_max[..., None])
        # exp(-inf - finite) = 0 on the first block: nothing accumulated yet to rescale.
        rescale = jnp.exp(running_max - new_max)
        denom = denom * rescale + probs.sum(axis=-1)
        acc = acc * rescale[..., None] + jnp.einsum("bhnm,bmhd->bhnd", probs, v_blk)
        running_max = new_max
    return jnp.einsum("bhnd->bnhd", acc / denom[..., None])
