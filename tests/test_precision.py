"""Model compute/parameter dtypes (Flax's ``dtype``/``param_dtype``): bf16 compute keeps fp32
parameters, fp32 normalisation statistics and fp32 losses; nested encoders follow the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxecg.config import ConfigError
from jaxecg.models import (
    MAE,
    BatchNorm,
    CMRClassifierConfig,
    ECGClassifier,
    ECGClassifierConfig,
    MAEConfig,
    SimCLR,
    SimCLRConfig,
)
from jaxecg.models.precision import with_precision

_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": (1, 12, 200)}
_X = np.zeros((2, 12, 200), np.float32)


def _dtypes(tree) -> set[jnp.dtype]:
    return {leaf.dtype for leaf in jax.tree.leaves(tree)}


def test_bf16_classifier_keeps_fp32_parameters_and_the_same_tree() -> None:
    fp32 = ECGClassifier(ECGClassifierConfig.preset("pluto", **_VIT))
    bf16 = ECGClassifier(ECGClassifierConfig.preset("pluto", **_VIT, dtype="bfloat16"))
    key = jax.random.key(0)
    params32 = jax.eval_shape(fp32.init, key, _X)["params"]
    params16 = jax.eval_shape(bf16.init, key, _X)["params"]
    assert jax.tree.structure(params16) == jax.tree.structure(params32)
    assert _dtypes(params16) == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(bf16.apply, {"params": params16}, _X).dtype == jnp.bfloat16
    stored16 = ECGClassifierConfig.preset("pluto", **_VIT, param_dtype="bfloat16")
    assert _dtypes(jax.eval_shape(ECGClassifier(stored16).init, key, _X)) == {
        jnp.dtype(jnp.bfloat16)
    }


def test_bf16_mae_returns_fp32_prediction_and_loss() -> None:
    cfg = MAEConfig.preset(
        "pluto",
        **_VIT,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        dtype="bfloat16",
    )
    rngs = {"params": jax.random.key(0), "masking": jax.random.key(1)}
    variables = jax.eval_shape(MAE(cfg).init, rngs, _X)
    out = jax.eval_shape(
        lambda v, x: MAE(cfg).apply(v, x, rngs={"masking": jax.random.key(1)}), variables, _X
    )
    assert out.loss.dtype == out.pred.dtype == out.reconstruction.dtype == jnp.float32


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_normalises_in_fp32_and_keeps_fp32_statistics(train: bool) -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, (8, 5)).astype(np.float32)
    x16 = jnp.asarray(x, jnp.bfloat16)
    bn16, bn32 = BatchNorm(dtype=jnp.bfloat16), BatchNorm()
    variables = bn32.init(jax.random.key(0), x, use_running_average=False)
    variables = {**variables, "batch_stats": {"mean": jnp.full(5, 3.0), "var": jnp.full(5, 4.0)}}

    def apply(module: BatchNorm, x: jax.Array):
        return module.apply(variables, x, use_running_average=not train, mutable=["batch_stats"])

    out16, stats16 = jax.jit(apply, static_argnums=0)(bn16, x16)
    out32, stats32 = jax.jit(apply, static_argnums=0)(bn32, x16.astype(jnp.float32))
    assert out16.dtype == jnp.bfloat16
    # Statistics and normalisation of the bf16 input in fp32, rounded to bf16 once at the end.
    np.testing.assert_array_equal(np.float32(out16), np.float32(out32.astype(jnp.bfloat16)))
    assert _dtypes(stats16) == {jnp.dtype(jnp.float32)}
    np.testing.assert_array_equal(stats16["batch_stats"]["mean"], stats32["batch_stats"]["mean"])


@pytest.mark.parametrize("config_cls", [SimCLRConfig, CMRClassifierConfig])
def test_encoder_follows_the_model_dtype(config_cls) -> None:
    cfg = config_cls.preset("resnet18", dtype="bfloat16")
    assert cfg.encoder.dtype == "bfloat16" and cfg.encoder.param_dtype == "float32"
    assert config_cls.from_dict(cfg.to_dict()) == cfg
    back = with_precision(cfg, dtype="float32")
    assert back.dtype == back.encoder.dtype == "float32"
    with pytest.raises(
        ConfigError, match="encoder.dtype='bfloat16' conflicts with dtype='float16'"
    ):
        config_cls.from_dict(
            {"dtype": "float16", "encoder": {"backbone": "resnet18", "dtype": "bfloat16"}}
        )


def test_simclr_bf16_computes_in_bf16_with_fp32_parameters() -> None:
    model = SimCLR(SimCLRConfig.preset("resnet18", dtype="bfloat16"))
    images = np.zeros((2, 16, 16, 3), np.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    assert _dtypes(variables) == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(model.apply, variables, images).dtype == jnp.bfloat16


def test_unknown_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dtype"):
        ECGClassifierConfig.from_dict({"dtype": "float8"})
