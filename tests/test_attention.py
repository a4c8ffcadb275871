"""Blocked online-softmax attention equals the default softmax attention to fp32 rounding."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxecg.models import ECGEncoder, ViTConfig, softmax_attention
from jaxecg.models.attention import blocked_attention

TOL = 1e-5


def _qkv(batch: int, nq: int, nk: int, heads: int = 3, head_dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    # Spread-out logits (std ~3) so the running max really changes between blocks.
    q = rng.standard_normal((batch, nq, heads, head_dim)).astype(np.float32) * 3
    k = rng.standard_normal((batch, nk, heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, nk, heads, head_dim)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


@pytest.mark.parametrize(
    ("nq", "nk", "block_size"),
    [
        (301, 301, 128),  # the ECG encoder's 1 + 300 tokens: 3 blocks of 101, 2 padded keys
        (60, 60, 16),  # the MAE encoder's 1 + 59 kept tokens, 4 blocks of 15, no padding
        (37, 37, 64),  # one block, the whole sequence
        (1, 50, 7),  # one query over many blocks (pooling-like cross attention)
    ],
)
def test_matches_softmax_attention(nq: int, nk: int, block_size: int) -> None:
    q, k, v = _qkv(2, nq, nk)
    scale = q.shape[-1] ** -0.5
    expected = jax.jit(functools.partial(softmax_attention, scale=scale))(q, k, v)
    blocked = functools.partial(blocked_attention, scale=scale, block_size=block_size)
    actual = jax.jit(blocked)(q, k, v)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=TOL, rtol=0)


def test_gradients_match_softmax_attention() -> None:
    q, k, v = _qkv(2, 45, 45, seed=1)
    weights = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape).astype(np.float32))

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, scale=0.3) * weights)

    def grads(fn):
        return jax.jit(jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2)))(q, k, v)

    expected = grads(softmax_attention)
    actual = grads(functools.partial(blocked_attention, block_size=10))
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_drop_in_for_the_encoder() -> None:
    cfg = ViTConfig.preset("tiny", embed_dim=64, depth=2, num_heads=4, img_size=(1, 12, 500))
    x = np.random.default_rng(3).standard_normal((2, 12, 500)).astype(np.float32)
    variables = jax.jit(ECGEncoder(cfg).init)(jax.random.key(0), x)

    def features(model: ECGEncoder) -> jax.Array:
        return jax.jit(lambda v, x: model.apply(v, x, localized=True))(variables, x)

    expected = features(ECGEncoder(cfg))
    actual = features(ECGEncoder(cfg, attention_fn=blocked_attention))
    np.testing.assert_allclose(actual, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("shapes", "block_size", "message"),
    [
        (((1, 4, 2, 8), (1, 4, 2, 8), (1, 4, 2, 8)), 0, "block_size must be positive"),
        (((1, 4, 2, 8), (1, 5, 2, 8), (1, 4, 2, 8)), 2, r"expected q \(B, Nq, heads, hd\)"),
        (((1, 4, 2, 8), (1, 4, 3, 8), (1, 4, 3, 8)), 2, r"expected q \(B, Nq, heads, hd\)"),
    ],
)
def test_bad_arguments_raise(shapes, block_size: int, message: str) -> None:
    q, k, v = (jnp.zeros(s, jnp.float32) for s in shapes)
    with pytest.raises(ValueError, match=message):
        blocked_attention(q, k, v, scale=1.0, block_size=block_size)
