"""SimCLR model and its projection heads against the reference (lightly 1.5 and 1.2 layouts).

Golden cases: the projection head in eval and train mode (outputs and updated running
statistics) and the full SimCLR forward; the legacy Linear-ReLU-Linear head against torch.
"""

from __future__ import annotations

import functools

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import convert
from jaxecg.compile_options import compiler_options
from jaxecg.models import (
    SimCLR,
    SimCLRConfig,
    SimCLRProjectionHead,
    nchw_to_nhwc,
)

CHECKPOINT = "dev/checkpoints/simclr_resnet18"


@functools.cache
def _simclr_variables() -> dict:
    variables, _ = convert.load(
        golden.checkpoint_path(CHECKPOINT), "simclr", SimCLRConfig.preset("resnet18")
    )
    return variables


def _head_variables() -> dict:
    variables = _simclr_variables()
    return {coll: variables[coll]["projection_head"] for coll in ("params", "batch_stats")}


def test_projection_head_eval_matches_reference() -> None:
    case_id = "dev/simclr/projection_head_eval"
    head = SimCLRProjectionHead(hidden_dim=512, output_dim=128)
    z = head.apply(_head_variables(), golden.arrays(case_id)["h"])
    golden.assert_matches(case_id, "z", z)


def test_projection_head_train_matches_reference() -> None:
    case_id = "dev/simclr/projection_head_train"
    head = SimCLRProjectionHead(hidden_dim=512, output_dim=128)
    z, updates = head.apply(
        _head_variables(), golden.arrays(case_id)["h"], train=True, mutable=["batch_stats"]
    )
    golden.assert_matches(case_id, "z", z)
    stats = updates["batch_stats"]
    for layer in ("1", "4"):
        golden.assert_matches(
            case_id, f"after__layers.{layer}.running_mean", stats[f"layers_{layer}"]["mean"]
        )
        golden.assert_matches(
            case_id, f"after__layers.{layer}.running_var", stats[f"layers_{layer}"]["var"]
        )


def test_simclr_forward_matches_reference() -> None:
    case_id = "dev/simclr/forward_eval"
    model = SimCLR(SimCLRConfig.preset("resnet18"))
    x = nchw_to_nhwc(golden.arrays(case_id)["x"])
    z = jax.jit(model.apply)(_simclr_variables(), x)
    golden.assert_matches(case_id, "z", z)
    z = jax.jit(model.apply, compiler_options=compiler_options(resnet=True))(_simclr_variables(), x)
    golden.assert_matches(case_id, "z", z)

    # encode gives the encoder's features: the projection head maps them onto the forward.
    features = jax.jit(functools.partial(model.apply, method=SimCLR.encode))(
        _simclr_variables(), x
    )
    assert features.shape == (2, 512)
    head = SimCLRProjectionHead(hidden_dim=512, output_dim=128)
    np.testing.assert_allclose(head.apply(_head_variables(), features), z, rtol=0, atol=1e-6)


def test_simclr_train_mode_updates_encoder_and_head_statistics() -> None:
    model = SimCLR(SimCLRConfig.preset("resnet18"))
    variables = _simclr_variables()
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    z, updates = jax.jit(
        functools.partial(model.apply, train=True, mutable=["batch_stats"])
    )(variables, x)
    assert z.shape == (4, 128)
    new = updates["batch_stats"]
    for module, bn in [("encoder_imaging", "bn1"), ("projection_head", "layers_4")]:
        old_mean = variables["batch_stats"][module][bn]["mean"]
        assert not np.allclose(new[module][bn]["mean"], old_mean)
    # Train mode normalises with batch statistics: the last BatchNorm's output has the batch
    # mean equal to its bias.
    bias = variables["params"]["projection_head"]["layers_4"]["bias"]
    np.testing.assert_allclose(jnp.mean(z, axis=0), bias, atol=1e-5)


def test_legacy_projection_head_matches_torch_linear_relu_linear() -> None:
    torch.manual_seed(0)
    ref = torch.nn.Sequential(
        torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)
    )  # lightly 1.2.22 SimCLRProjectionHead: layers.0, layers.2
    params = {
        f"layers_{i}": {
            "kernel": ref[i].weight.detach().numpy().T,
            "bias": ref[i].bias.detach().numpy(),
        }
        for i in (0, 2)
    }
    head = SimCLRProjectionHead(hidden_dim=32, output_dim=8, layout="legacy")
    h = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    abstract = jax.eval_shape(head.init, jax.random.key(0), h)
    assert set(abstract) == {"params"}  # no BatchNorm, no batch_stats
    assert jax.tree.map(lambda a: a.shape, abstract["params"]) == jax.tree.map(
        np.shape, params
    )
    want = ref(torch.from_numpy(h)).detach().numpy()
    for train in (False, True):  # no BatchNorm: train and eval agree
        np.testing.assert_allclose(head.apply({"params": params}, h, train=train), want, atol=1e-6)


def test_simclr_legacy_layout_param_tree() -> None:
    model = SimCLR(SimCLRConfig.preset("resnet18", head_layout="legacy"))
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    head = jax.tree.map(lambda a: a.shape, abstract["params"]["projection_head"])
    assert head == {
        "layers_0": {"kernel": (512, 512), "bias": (512,)},
        "layers_2": {"kernel": (512, 128), "bias": (128,)},
    }
    assert "projection_head" not in abstract["batch_stats"]


def test_config_rejects_unknown_backbone_and_layout() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vit'"):
        SimCLRConfig.from_dict({"encoder": {"backbone": "vit"}})
    with pytest.raises(ValueError, match="head_layout"):
        SimCLRConfig.from_dict({"head_layout": "mlp"})
    with pytest.raises(ValueError, match="unknown head layout"):
        SimCLRProjectionHead(hidden_dim=8, layout="mlp").init(jax.random.key(0), jnp.ones((2, 8)))
