"""Attention backends: blocked online-softmax attention equals the default softmax attention
to fp32 rounding, ``model.attention`` picks them (exact to the golden cases in fp32), bf16
keeps the softmax in fp32, and cuDNN is chosen where it can run and refused where it cannot."""

from __future__ import annotations

import dataclasses
import functools

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import vit_golden

from jaxecg.config import ConfigError
from jaxecg.models import MAE, ECGEncoder, ViTConfig, softmax_attention
from jaxecg.models.attention import (
    blocked_attention,
    cudnn_attention,
    resolve_attention,
)

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


@pytest.mark.parametrize(
    ("backend", "platform", "dtype", "expected"),
    [
        ("auto", "gpu", jnp.bfloat16, cudnn_attention),
        ("auto", "gpu", jnp.float16, cudnn_attention),
        ("auto", "gpu", jnp.float32, softmax_attention),  # cuDNN has no fp32 flash kernel
        ("auto", "cpu", jnp.bfloat16, blocked_attention),
        ("auto", "cpu", jnp.float32, blocked_attention),
        ("auto", "tpu", jnp.bfloat16, softmax_attention),
        ("xla", "gpu", jnp.bfloat16, softmax_attention),
        ("blocked", "cpu", jnp.float32, blocked_attention),
        ("cudnn", "gpu", "bfloat16", cudnn_attention),
    ],
)
def test_backend_choice(backend, platform, dtype, expected) -> None:
    assert resolve_attention(backend, dtype, platform) is expected


@pytest.mark.parametrize(
    ("backend", "platform", "dtype", "message"),
    [
        ("cudnn", "cpu", jnp.bfloat16, r"needs an NVIDIA GPU; this process runs on 'cpu'"),
        ("cudnn", "gpu", jnp.float32, "needs a bfloat16 or float16 compute dtype"),
        ("flash", "gpu", jnp.bfloat16, "unknown backend 'flash'"),
    ],
)
def test_backend_that_cannot_run_is_an_error(backend, platform, dtype, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_attention(backend, dtype, platform)


def test_cudnn_on_this_cpu_fails_at_init_not_silently() -> None:
    cfg = ViTConfig.preset(
        "pluto", embed_dim=32, depth=1, num_heads=2, img_size=(1, 12, 200), dtype="bfloat16"
    )
    model = ECGEncoder(dataclasses.replace(cfg, attention="cudnn"))
    with pytest.raises(ConfigError, match="model.attention='cudnn'.*NVIDIA GPU"):
        model.init(jax.random.key(0), np.zeros((1, 12, 200), np.float32))


def test_cudnn_backend_calls_jax_with_our_layout_and_scale(monkeypatch) -> None:
    """Where cuDNN can run, the model hands jax.nn.dot_product_attention its q, k, v in the
    BTNH layout with the timm scale (run here through jax's XLA implementation)."""
    calls = []
    original = jax.nn.dot_product_attention

    def recording(q, k, v, *, scale, implementation):
        calls.append(implementation)
        return original(q, k, v, scale=scale, implementation="xla")

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    cfg = ViTConfig.preset(
        "pluto", embed_dim=16, depth=1, num_heads=2, img_size=(1, 12, 100), dtype="bfloat16"
    )
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 12, 100)).astype(np.float32)
    shapes = jax.eval_shape(ECGEncoder(cfg).init, jax.random.key(0), x)
    variables = jax.tree.map(lambda s: rng.normal(0.0, 0.5, s.shape).astype(s.dtype), shapes)

    def tokens(model: ECGEncoder) -> jax.Array:
        return jax.jit(functools.partial(model.apply, localized=True))(variables, x)

    fused = tokens(ECGEncoder(cfg))  # auto -> cudnn on "gpu" in bf16
    assert calls and set(calls) == {"cudnn"}
    plain = tokens(ECGEncoder(cfg, attention_fn=softmax_attention))
    np.testing.assert_allclose(np.float32(fused), np.float32(plain), atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    ("case_id", "backend"),
    # "blocked" (what "auto" is on CPU) runs in every golden test of the models.
    [("dev/ecg_encoder/attention_pool", "xla"), ("dev/mae/forward", "xla")],
)
def test_backends_match_the_golden_cases(case_id: str, backend: str) -> None:
    arrays = golden.arrays(case_id)
    if case_id.startswith("dev/mae/"):
        cfg = dataclasses.replace(vit_golden.mae_config(case_id), attention=backend)
        out = jax.jit(MAE(cfg).apply)(
            vit_golden.variables(case_id, "mae", cfg), arrays["x"], noise=arrays["noise"]
        )
        golden.assert_matches(case_id, "pred", out.pred)
        golden.assert_matches(case_id, "loss", out.loss)
        return
    cfg = dataclasses.replace(vit_golden.encoder_config(case_id), attention=backend)
    out = jax.jit(ECGEncoder(cfg).apply)(
        vit_golden.variables(case_id, "ecg_encoder", cfg), arrays["x"]
    )
    golden.assert_matches(case_id, "out", out)


def _equations(jaxpr):
    """Every equation of ``jaxpr``, nested ones (jit, custom_jvp) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)


@pytest.mark.parametrize(
    "fn", [softmax_attention, functools.partial(blocked_attention, block_size=16)]
)
def test_bf16_inputs_keep_the_softmax_in_fp32(fn) -> None:
    q, k, v = _qkv(2, 60, 60, seed=5)
    expected = softmax_attention(q, k, v, scale=0.35)
    half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    eqns = list(_equations(jax.make_jaxpr(functools.partial(fn, scale=0.35))(*half).jaxpr))
    # The softmax's exp runs on fp32 scores; the products on bf16 operands.
    exps = [e for e in eqns if e.primitive.name == "exp"]
    assert exps and all(e.invars[0].aval.dtype == jnp.float32 for e in exps)
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    assert dots and all(x.aval.dtype == jnp.bfloat16 for e in dots for x in e.invars)
    out = fn(*half, scale=0.35)
    assert out.dtype == jnp.bfloat16
    # bf16 rounding of q, k, v and of the scores: within 2 % of the largest output.
    np.testing.assert_allclose(np.float32(out), expected, atol=0.02 * np.abs(expected).max())
