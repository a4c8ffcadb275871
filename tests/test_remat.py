"""``remat``: rematerialised transformer blocks keep the parameters, the loss and the gradients."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxecg.models import MAE, ECGClassifier, ECGClassifierConfig, MAEConfig
from jaxecg.models.vit import block_class

_VIT = {"embed_dim": 16, "depth": 2, "num_heads": 2, "img_size": (1, 12, 100)}
_X = np.zeros((2, 12, 100), np.float32)


def _primitives(jaxpr) -> set[str]:
    """Primitive names of ``jaxpr`` and of the jaxprs nested in it."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                names |= _primitives(inner)
    return names


def _rematerialises(fn, *args) -> bool:
    # jax.checkpoint's primitive is "remat2" in this jax ("checkpoint" in others).
    names = _primitives(jax.make_jaxpr(fn)(*args).jaxpr)
    return any(name.startswith(("remat", "checkpoint")) for name in names)


def test_remat_block_has_the_same_loss_and_grads() -> None:
    # Dropout and stochastic depth on, training mode: the recomputation must redraw the
    # same masks, and return_attn must pass through as a static flag.
    x = np.random.default_rng(0).standard_normal((4, 9, 16)).astype(np.float32)
    weights = np.random.default_rng(1).standard_normal((4, 9, 16)).astype(np.float32)
    rngs = {"dropout": jax.random.key(1)}
    plain, remat = (block_class(r)(2, drop=0.2, drop_path=0.2) for r in (False, True))
    params = jax.jit(plain.init)(jax.random.key(0), x)

    def loss(block, params):
        out, attn = block.apply(params, x, True, True, rngs=rngs)
        return (out * weights).sum() + attn.sum()

    assert _rematerialises(lambda p: loss(remat, p), params)
    assert not _rematerialises(lambda p: loss(plain, p), params)
    (want, want_grads), (got, got_grads) = (
        jax.jit(jax.value_and_grad(lambda p, b=b: loss(b, p)))(params) for b in (plain, remat)
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Equal up to fp32 rounding (the recomputed forward may fuse differently).
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.abs(w).max()))


@pytest.mark.parametrize("kind", ["ecg_classifier", "mae"])
def test_models_rematerialise_their_blocks_with_the_same_parameters(kind: str) -> None:
    if kind == "mae":
        cfg = MAEConfig.preset(
            "pluto", **_VIT, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2
        )
        module, rngs = MAE, {"params": jax.random.key(0), "masking": jax.random.key(1)}
    else:
        cfg, module = ECGClassifierConfig.preset("pluto", **_VIT), ECGClassifier
        rngs = jax.random.key(0)
    shapes = {}
    for remat in (False, True):
        model = module(dataclasses.replace(cfg, remat=remat))
        variables = jax.eval_shape(model.init, rngs, _X)
        shapes[remat] = jax.tree.map(lambda a: a.shape, variables)

        def forward(variables, model=model):
            return model.apply(variables, _X, rngs={"masking": jax.random.key(2)})

        assert _rematerialises(forward, variables) == remat
    assert shapes[True] == shapes[False]
