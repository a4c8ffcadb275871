"""ECGEncoder and the ViT blocks against the reference's ECGEncoder.forward_features.

Golden cases: attention-pool, avg and cls-token features and localized patch tokens,
with weights converted by ``convert.load``. Also input validation, config presets,
swappable attention, dropout/stochastic depth and jit/vmap/grad.
"""

from __future__ import annotations

import functools

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import vit_golden

from jaxecg.config import ConfigError
from jaxecg.models import Block, ECGEncoder, Mlp, ViTConfig
from jaxecg.models.vit import ENCODER_PRESETS

ENCODER_CASES = golden.case_ids("dev/ecg_encoder/")
ATTN_CASE = "dev/ecg_encoder/attention_pool"


@functools.cache
def _setup(case_id: str) -> tuple[ECGEncoder, dict, np.ndarray]:
    cfg = vit_golden.encoder_config(case_id)
    return (
        ECGEncoder(cfg),
        vit_golden.variables(case_id, "ecg_encoder", cfg),
        golden.arrays(case_id)["x"],
    )


def test_all_encoder_cases_covered() -> None:
    assert set(ENCODER_CASES) == {
        "dev/ecg_encoder/attention_pool",
        "dev/ecg_encoder/avg",
        "dev/ecg_encoder/no_pool",
        "dev/ecg_encoder/localized",
    }


@pytest.mark.parametrize("case_id", ENCODER_CASES)
def test_encoder_matches_reference(case_id: str) -> None:
    model, variables, x = _setup(case_id)
    localized = golden.case(case_id)["call"]["localized"]
    out = model.apply(variables, x, localized=localized)
    golden.assert_matches(case_id, "out", out)
    # The (B, leads, T) layout is the same ECG without the channel axis.
    np.testing.assert_array_equal(
        np.asarray(model.apply(variables, x[:, 0], localized=localized)), out
    )


def test_param_tree_does_not_depend_on_localized() -> None:
    model, _, x = _setup(ATTN_CASE)
    shapes = [
        jax.tree.map(
            jnp.shape,
            jax.eval_shape(functools.partial(model.init, localized=loc), jax.random.key(0), x),
        )
        for loc in (False, True)
    ]
    assert shapes[0] == shapes[1]
    assert set(shapes[0]["params"]) == {
        "patch_embed",
        "cls_token",
        "pos_embed",
        "blocks_0",
        "blocks_1",
        "attention_pool",
        "fc_norm",
    }
    assert shapes[0]["params"]["patch_embed"]["proj"]["kernel"] == (1, 100, 1, 64)
    assert set(shapes[0]["params"]["attention_pool"]) == {"q_proj", "k_proj", "v_proj", "out_proj"}


@pytest.mark.parametrize(
    ("pool", "has", "lacks"),
    [("token", "norm", "fc_norm"), ("avg", "fc_norm", "norm")],
)
def test_pool_owns_its_norm(pool: str, has: str, lacks: str) -> None:
    cfg = ViTConfig(img_size=(1, 12, 200), embed_dim=16, depth=1, num_heads=2, global_pool=pool)
    params = jax.eval_shape(ECGEncoder(cfg).init, jax.random.key(0), np.zeros((1, 12, 200)))[
        "params"
    ]
    assert has in params and lacks not in params and "attention_pool" not in params


def test_presets() -> None:
    assert ENCODER_PRESETS["tiny"] == {"embed_dim": 384, "depth": 3, "num_heads": 6}
    expected = {
        "pluto": (256, 2, 8),
        "tiny": (384, 3, 6),
        "tinyDeep": (192, 12, 3),
        "small": (512, 4, 8),
        "medium": (640, 6, 8),
        "big": (768, 8, 8),
        "base": (768, 12, 12),
        "large": (1024, 24, 16),
        "huge": (1280, 32, 16),
    }
    for name, dims in expected.items():
        cfg = ViTConfig.preset(name)
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == dims
        assert cfg.img_size == (1, 12, 2500) and cfg.patch_size == (1, 100)
        assert cfg.grid_size == (12, 25) and cfg.num_patches == 300
        assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    assert ViTConfig() == ViTConfig.preset("tiny")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_heads": 5}, "not divisible by num_heads"),
        ({"img_size": (1, 12, 2550)}, "not divisible by patch_size"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"global_pool": "max"}, "global_pool"),
        ({"depth": 0}, "depth"),
    ],
)
def test_bad_config_raises(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ViTConfig.preset("tiny", **changes)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 11, 500), r"expected 12 leads.*\(B, 12, 500\).*got \(2, 11, 500\)"),
        (
            (2, 1, 12, 510),
            r"time length 510 is not divisible by the patch width 100.*\(2, 1, 12, 510\)",
        ),
        ((2, 12, 600), r"expected 500 time samples.*got \(2, 12, 600\)"),
        (
            (12, 500),
            r"expected an ECG batch of shape \(B, 12, 500\) or \(B, 1, 12, 500\), got \(12, 500\)",
        ),
        ((2, 3, 12, 500), r"got \(2, 3, 12, 500\)"),
    ],
)
def test_bad_input_shape_raises(shape: tuple[int, ...], message: str) -> None:
    model, variables, _ = _setup(ATTN_CASE)
    with pytest.raises(ValueError, match=message):
        model.apply(variables, np.zeros(shape, np.float32))


def test_nan_input_raises_when_concrete_only() -> None:
    model, variables, x = _setup(ATTN_CASE)
    bad = x.copy()
    bad[1, 0, 3, 7] = np.nan
    with pytest.raises(ValueError, match=r"contains NaN"):
        model.apply(variables, bad)
    # Under jit the input is a tracer: no host check, the NaN propagates instead.
    out = jax.jit(model.apply)(variables, bad)
    assert np.isnan(np.asarray(out[1])).all() and np.isfinite(np.asarray(out[0])).all()


def test_jit_matches_eager() -> None:
    model, variables, x = _setup(ATTN_CASE)
    jitted = jax.jit(functools.partial(model.apply, localized=False))(variables, x)
    golden.assert_matches(ATTN_CASE, "out", jitted)


def test_vmap_over_examples() -> None:
    model, variables, x = _setup(ATTN_CASE)

    def one(example: jax.Array) -> jax.Array:
        return model.apply(variables, example[None])[0]

    golden.assert_matches(ATTN_CASE, "out", jax.jit(jax.vmap(one))(jnp.asarray(x)))


def test_grad_through_encoder() -> None:
    model, variables, x = _setup(ATTN_CASE)

    def loss(params: dict) -> jax.Array:
        return jnp.sum(model.apply({"params": params}, x) ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for name in ("patch_embed", "pos_embed", "cls_token", "blocks_0", "attention_pool", "fc_norm"):
        leaves = jax.tree.leaves(grads[name])
        assert all(np.all(np.isfinite(g)) for g in leaves)
        assert max(float(jnp.abs(g).max()) for g in leaves) > 0, name


def test_swapped_attention_fn_gives_same_features() -> None:
    model, variables, x = _setup(ATTN_CASE)
    fused = ECGEncoder(model.config, attention_fn=jax.nn.dot_product_attention)
    golden.assert_matches(ATTN_CASE, "out", fused.apply(variables, x))


def test_mlp_uses_exact_gelu() -> None:
    x = np.linspace(-4, 4, 2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)
    mlp = Mlp(hidden_dim=16)
    params = vit_golden.random_variables(mlp, x)["params"]
    torch_mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    with torch.no_grad():
        for i, name in ((0, "fc1"), (2, "fc2")):
            torch_mlp[i].weight.copy_(torch.tensor(np.asarray(params[name]["kernel"]).T))
            torch_mlp[i].bias.copy_(torch.tensor(np.asarray(params[name]["bias"])))
        expected = torch_mlp(torch.tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(mlp.apply({"params": params}, x)), expected, atol=2e-6)


def test_dropout_and_drop_path_only_in_training() -> None:
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5, 16)), jnp.float32)
    block = Block(num_heads=2, drop=0.3, attn_drop=0.2, drop_path=0.5)
    params = vit_golden.random_variables(block, x)
    run = jax.jit(block.apply, static_argnames="train")
    eval_out = run(params, x, train=False)
    # "rbg" keys: XLA's RngBitGenerator compiles much faster than threefry on CPU.
    train_a = run(params, x, train=True, rngs={"dropout": jax.random.key(1, impl="rbg")})
    train_b = run(params, x, train=True, rngs={"dropout": jax.random.key(1, impl="rbg")})
    np.testing.assert_array_equal(train_a, train_b)
    assert not np.allclose(train_a, eval_out)
    # Stochastic depth drops whole residual branches per sample (each branch on its own
    # draw): samples with both branches dropped pass through exactly, the others change.
    path_only = Block(num_heads=2, drop_path=0.5)
    out = jax.jit(path_only.apply, static_argnames="train")(
        params, x, train=True, rngs={"dropout": jax.random.key(3, impl="rbg")}
    )
    skipped = np.all(np.isclose(out, x), axis=(1, 2))
    assert 0 < skipped.sum() < len(x)
