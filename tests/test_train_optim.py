"""Optimiser parameter groups vs the golden tables, and update rules vs torch's optimisers."""

import re

import golden
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jaxecg.models.ecg_classifier import ECGClassifier, ECGClassifierConfig
from jaxecg.models.mae import MAE, MAEConfig
from jaxecg.train.config import OptimConfig
from jaxecg.train.optim import (
    adam_l2,
    adamw,
    freeze,
    mae_decay_mask,
    vit_decay_mask,
    vit_layer_scales,
)

import torch  # noqa: E402 - the dev extra pins it; parity needs the real thing

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_MHA = {"q_proj": "in_proj", "k_proj": "in_proj", "v_proj": "in_proj"}


def torch_name(path: tuple[str, ...]) -> str:
    """Flax path → the reference's parameter name (``blocks_0/attn/qkv/kernel`` →
    ``blocks.0.attn.qkv.weight``; MHA q/k/v projections → ``in_proj_weight``/``in_proj_bias``)."""
    *modules, leaf = path
    if modules and modules[-1] in _MHA:
        return ".".join(modules[:-1]) + f".in_proj_{_LEAF[leaf]}"
    modules = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
    return ".".join([*modules, _LEAF.get(leaf, leaf)]) if modules else leaf


def flat(tree):
    return {path: leaf for path, leaf in traverse_util.flatten_dict(tree).items()}


def test_layer_decay_groups_match_param_groups_lrd():
    case = golden.case("dev/tables/param_groups_lrd_ecg_classifier")
    model_cfg = case["model"]["config"]
    cfg = ECGClassifierConfig(
        img_size=tuple(model_cfg["img_size"]),
        patch_size=tuple(model_cfg["patch_size"]),
        embed_dim=model_cfg["embed_dim"],
        depth=model_cfg["depth"],
        num_heads=model_cfg["num_heads"],
        num_classes=model_cfg["num_classes"],
        global_pool=model_cfg["global_pool"],
    )
    params = jax.eval_shape(
        ECGClassifier(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 12, 500))
    )["params"]
    decay = flat(vit_decay_mask(params))
    scales = flat(
        vit_layer_scales(params, depth=cfg.depth, layer_decay=case["call"]["layer_decay"])
    )

    expected = {row["name"]: row for row in case["expected"]["per_parameter"]}
    got = {}
    for path in decay:
        name = torch_name(path)
        row = (scales[path], case["call"]["weight_decay"] if decay[path] else 0.0)
        # q/k/v share the reference's one in_proj tensor, so they must agree.
        assert got.setdefault(name, row) == row, name
    assert set(got) == set(expected)
    for name, (scale, wd) in got.items():
        assert scale == pytest.approx(expected[name]["lr_scale"], rel=1e-12), name
        assert wd == expected[name]["weight_decay"], name


def test_mae_decay_mask_matches_add_weight_decay():
    case = golden.case("dev/tables/add_weight_decay_lit_mae")
    groups = case["expected"]["groups_in_order"]
    cfg = MAEConfig(
        img_size=(1, 12, 500),
        embed_dim=64,
        depth=2,
        num_heads=4,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=4,
    )
    params = jax.eval_shape(
        lambda: MAE(cfg).init(
            {"params": jax.random.PRNGKey(0), "masking": jax.random.PRNGKey(1)},
            jnp.zeros((1, 12, 500)),
        )
    )["params"]
    mask = {torch_name(p): bool(v) for p, v in flat(mae_decay_mask(params)).items()}
    expected = {name: g["weight_decay"] > 0 for g in groups for name in g["params"]}
    # The frozen sin-cos tables are not parameters here at all (the reference skips them).
    assert set(case["expected"]["skipped_frozen"]).isdisjoint(mask)
    assert mask == expected


def _torch_steps(opt_factory, params, grads_per_step):
    tensors = {
        k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in params.items()
    }
    opt = opt_factory(tensors)
    for grads in grads_per_step:
        for k, g in grads.items():
            tensors[k].grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


def _optax_steps(tx, params, grads_per_step):
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
    grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(3)]
    return params, grads


def test_adamw_groups_follow_torch_adamw(problem):
    params, grads = problem
    lr, wd, scale_w, scale_b = 1e-2, 0.05, 0.5625, 1.0
    expected = _torch_steps(
        lambda t: torch.optim.AdamW(
            [
                {"params": [t["w"]], "lr": lr * scale_w, "weight_decay": wd},
                {"params": [t["b"]], "lr": lr * scale_b, "weight_decay": 0.0},
            ],
            betas=(0.9, 0.95),
        ),
        params,
        grads,
    )
    optim = OptimConfig(lr=lr, weight_decay=wd, b1=0.9, b2=0.95)
    tx = adamw(
        optax.constant_schedule(lr),
        optim,
        decay_mask={"w": True, "b": False},
        lr_scales={"w": scale_w, "b": scale_b},
    )
    with jax.enable_x64(True):
        got = _optax_steps(tx, jax.tree.map(jnp.asarray, params), grads)
    for k in params:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-14)


def test_adam_l2_follows_torch_adam_and_freeze_keeps_params(problem):
    params, grads = problem
    expected = _torch_steps(
        lambda t: torch.optim.Adam(list(t.values()), lr=3e-3, weight_decay=1e-4), params, grads
    )
    with jax.enable_x64(True):
        tx = adam_l2(optax.constant_schedule(3e-3), OptimConfig(weight_decay=1e-4))
        got = _optax_steps(tx, jax.tree.map(jnp.asarray, params), grads)
        frozen = _optax_steps(
            freeze(tx, params, lambda names: names[0] == "w"),
            jax.tree.map(jnp.asarray, params),
            grads,
        )
    for k in params:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(frozen["w"], params["w"])
    np.testing.assert_allclose(frozen["b"], expected["b"], rtol=1e-12, atol=1e-14)
