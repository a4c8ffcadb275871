"""Attention kernels with one signature, and the choice between them (``model.attention``).

An :data:`AttentionFn` maps ``(B, N, heads, hd)`` q, k, v and a keyword ``scale`` to
``(B, N, heads, hd)``. Three backends:

- ``xla``: :func:`softmax_attention`, the plain timm computation materialising the
  ``(B, heads, N, N)`` scores (exact to the reference in fp32);
- ``blocked``: :func:`blocked_attention`, the FlashAttention recurrence over key blocks
  (running max and denominator per query), so only ``(B, heads, N, block)`` scores exist
  at a time; same result up to fp32 rounding;
- ``cudnn``: :func:`cudnn_attention`, ``jax.nn.dot_product_attention`` with cuDNN's fused
  flash attention (NVIDIA GPUs, bf16/fp16 only).

With bf16 inputs the products run in bf16 and the softmax (scores, max, denominator) in
fp32, as torch autocast does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from jaxecg.config import ConfigError

AttentionFn = Callable[..., jax.Array]
AttentionBackend = Literal["auto", "xla", "cudnn", "blocked"]

_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def attention_probs(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    """Softmax attention weights ``(B, heads, Nq, Nk)`` of ``(B, N, heads, hd)`` q and k.

    timm's order: ``softmax((q @ k^T) * scale)`` over the keys; the product runs in the
    inputs' dtype, the scaling and softmax in (at least) fp32.
    """
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32)) * scale
    return jax.nn.softmax(logits, axis=-1)


def attend(probs: jax.Array, v: jax.Array) -> jax.Array:
    """Weights ``(B, heads, Nq, Nk)`` applied to ``(B, Nk, heads, hd)`` values -> ``(B, Nq, heads, hd)``.

    The product runs in the values' dtype (bf16 under mixed precision).
    """
    return jnp.einsum("bhnm,bmhd->bnhd", probs.astype(v.dtype), v)


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
    """Plain softmax attention materialising ``(B, heads, N, N)``; layout ``(B, N, heads, hd)``."""
    return attend(attention_probs(q, k, scale), v)


def blocked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, block_size: int = 128
) -> jax.Array:
    """Softmax attention of ``(B, N, heads, hd)`` q, k, v over key blocks -> ``(B, N, heads, hd)``.

    The keys are split into ``ceil(N / block_size)`` equal blocks (the last one padded
    with keys that get zero weight). Block count is static, so the loop unrolls under
    ``jit``. Running max, denominator and accumulator are fp32 whatever the input dtype.
    The backward pass is FlashAttention's: it keeps only the output and the per-query
    log-sum-exp and recomputes each block's probabilities, so neither pass ever holds the
    ``(B, heads, N, N)`` scores (autodiff of the loop would store every block's).
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if q.shape[0] != k.shape[0] or k.shape != v.shape or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"expected q (B, Nq, heads, hd) and k, v (B, Nk, heads, hd), "
            f"got {q.shape}, {k.shape}, {v.shape}"
        )
    return _flash(q, k, v, float(scale), int(block_size))


def _key_blocks(num_keys: int, block_size: int) -> tuple[int, int, int]:
    """``(blocks, block, pad)``: equal blocks as small as the count allows (301 at 128 -> 3 x 101)."""
    num_blocks = -(-num_keys // block_size)
    block = -(-num_keys // num_blocks)
    return num_blocks, block, num_blocks * block - num_keys


def _block_scores(
    q: jax.Array, k_blk: jax.Array, scale: float, valid: int, stats: jnp.dtype
) -> jax.Array:
    """``(B, heads, Nq, block)`` scaled scores in ``stats``; padded keys (past ``valid``) -inf.

    timm scales the product, ``(q @ k^T) * scale``. For a power-of-two scale (head dims 4,
    16, 64, 256, ...) scaling q first rounds identically and saves a pass over the scores.
    """
    exact = math.frexp(scale)[0] == 0.5
    scores = jnp.einsum("bnhd,bmhd->bhnm", q * jnp.asarray(scale, q.dtype) if exact else q, k_blk)
    scores = scores.astype(stats) if exact else scores.astype(stats) * scale
    if valid < k_blk.shape[1]:
        scores = jnp.where(jnp.arange(k_blk.shape[1]) < valid, scores, -jnp.inf)
    return scores


def _pad_keys(x: jax.Array, pad: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else x


def _flash_forward(
    q: jax.Array, k: jax.Array, v: jax.Array, scale: float, block_size: int
) -> tuple[jax.Array, jax.Array]:
    """Output ``(B, Nq, heads, hd)`` and log-sum-exp ``(B, heads, Nq)`` (fp32) of the scores."""
    num_keys = k.shape[1]
    num_blocks, block, pad = _key_blocks(num_keys, block_size)
    k, v = _pad_keys(k, pad), _pad_keys(v, pad)
    batch, num_queries, heads, head_dim = q.shape
    stats = jnp.promote_types(q.dtype, jnp.float32)
    running_max = jnp.full((batch, heads, num_queries), -jnp.inf, stats)
    denom = jnp.zeros((batch, heads, num_queries), stats)
    acc = jnp.zeros((batch, heads, num_queries, head_dim), stats)
    for i in range(num_blocks):
        start = i * block
        k_blk, v_blk = k[:, start : start + block], v[:, start : start + block]
        scores = _block_scores(q, k_blk, scale, min(block, num_keys - start), stats)
        new_max = jnp.maximum(running_max, scores.max(axis=-1))
        probs = jnp.exp(scores - new_max[..., None])
        # exp(-inf - finite) = 0 on the first block: nothing accumulated yet to rescale.
        rescale = jnp.exp(running_max - new_max)
        denom = denom * rescale + probs.sum(axis=-1)
        block_out = jnp.einsum("bhnm,bmhd->bhnd", probs.astype(v.dtype), v_blk)
        acc = acc * rescale[..., None] + block_out.astype(stats)
        running_max = new_max
    out = jnp.einsum("bhnd->bnhd", acc / denom[..., None]).astype(q.dtype)
    return out, running_max + jnp.log(denom)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _flash(q: jax.Array, k: jax.Array, v: jax.Array, scale: float, block_size: int) -> jax.Array:
    return _flash_forward(q, k, v, scale, block_size)[0]


def _flash_fwd(
    q: jax.Array, k: jax.Array, v: jax.Array, scale: float, block_size: int
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    out, lse = _flash_forward(q, k, v, scale, block_size)
    return out, (q, k, v, out, lse)


def _flash_bwd(
    scale: float, block_size: int, residuals: tuple[jax.Array, ...], d_out: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """FlashAttention-2's backward: per key block, ``P = exp(S - lse)``, ``dV = P^T dO``,
    ``dS = P * (dO V^T - rowsum(dO * O))``, ``dQ += dS K * scale``, ``dK = dS^T Q * scale``."""
    q, k, v, out, lse = residuals
    num_keys = k.shape[1]
    num_blocks, block, pad = _key_blocks(num_keys, block_size)
    k_pad, v_pad = _pad_keys(k, pad), _pad_keys(v, pad)
    stats = lse.dtype
    # rowsum(dO * O): an elementwise product and a sum (no fp32 matmul under bf16 compute).
    delta = jnp.sum(d_out.astype(stats) * out.astype(stats), axis=-1).transpose(0, 2, 1)
    d_q = jnp.zeros(q.shape, stats)
    d_k, d_v = [], []
    for i in range(num_blocks):
        start = i * block
        k_blk, v_blk = k_pad[:, start : start + block], v_pad[:, start : start + block]
        scores = _block_scores(q, k_blk, scale, min(block, num_keys - start), stats)
        probs = jnp.exp(scores - lse[..., None])
        d_v.append(jnp.einsum("bhnm,bnhd->bmhd", probs.astype(d_out.dtype), d_out))
        d_probs = jnp.einsum("bnhd,bmhd->bhnm", d_out, v_blk).astype(stats)
        d_scores = (probs * (d_probs - delta[..., None]) * scale).astype(q.dtype)
        d_q = d_q + jnp.einsum("bhnm,bmhd->bnhd", d_scores, k_blk).astype(stats)
        d_k.append(jnp.einsum("bhnm,bnhd->bmhd", d_scores, q))
    d_k = jnp.concatenate(d_k, axis=1)[:, :num_keys]
    d_v = jnp.concatenate(d_v, axis=1)[:, :num_keys]
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


_flash.defvjp(_flash_fwd, _flash_bwd)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
    """cuDNN fused flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``).

    Same ``(B, N, heads, hd)`` layout (jax's ``BTNH``) and scale; NVIDIA GPUs with bf16 or
    fp16 inputs only (cuDNN has no fp32 flash kernel).
    """
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")


_BACKENDS: dict[str, AttentionFn] = {
    "xla": softmax_attention,
    "blocked": blocked_attention,
    "cudnn": cudnn_attention,
}


def resolve_attention(
    backend: AttentionBackend, dtype: jnp.dtype | str, platform: str | None = None
) -> AttentionFn:
    """The :data:`AttentionFn` of ``model.attention`` for a compute ``dtype`` on ``platform``.

    ``platform`` defaults to this process's JAX backend (``"cpu"``, ``"gpu"``, ``"tpu"``).
    ``auto`` picks ``cudnn`` on a GPU with bf16/fp16 compute — the fused kernel never
    writes the ``N x N`` scores to memory and is the fastest there —, ``blocked`` on CPU —
    smaller score tiles and the FlashAttention backward make the ECG encoder ~1.4x and the
    MAE train step ~1.1x faster than ``xla`` there, equal to it up to fp32 rounding
    (``benchmarks/README.md``) — and ``xla`` everywhere else (cuDNN has no fp32 flash
    kernel; on TPU XLA fuses the plain computation). ``cudnn`` where it cannot run is an
    error, never a silent fallback.
    """
    platform = jax.default_backend() if platform is None else platform
    dtype = jnp.dtype(dtype)
    if backend == "auto":
        backend = {"gpu": "cudnn" if dtype in _HALF else "xla", "cpu": "blocked"}.get(
            platform, "xla"
        )
    if backend not in _BACKENDS:
        expected = ["auto", *_BACKENDS]
        raise ConfigError(
            f"model.attention: unknown backend {backend!r}; expected one of {expected}"
        )
    if backend == "cudnn":
        if platform != "gpu":
            raise ConfigError(
                "model.attention='cudnn' runs cuDNN flash attention, which needs an NVIDIA "
                f"GPU; this process runs on {platform!r}. Use 'auto' (cudnn on GPU with "
                "bf16/fp16, else xla), 'xla' or 'blocked'"
            )
        if dtype not in _HALF:
            raise ConfigError(
                "model.attention='cudnn' needs a bfloat16 or float16 compute dtype "
                f"(model.dtype or train.mixed_precision=true), got {dtype.name}"
            )
    return _BACKENDS[backend]
