"""CMREncoder (torchvision ResNet18/50) and torch-semantics BatchNorm against the reference.

Golden cases: eval features of ResNet18 (32/64 px, B=2 and B=1) and ResNet50 (64 px), and a
train-mode forward with every BatchNorm's updated running statistics. Weights come from the
golden checkpoints through ``convert.load``.
"""

from __future__ import annotations

import functools

import flax
import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import AxisType, PartitionSpec as P

import convert
from jaxecg.compile_options import CPU_RESNET_OPTIONS, compiler_options
from jaxecg.config import ConfigError
from jaxecg.models import BatchNorm, CMREncoder, ResNetConfig, nchw_to_nhwc

EVAL_CASES = [
    "dev/cmr_encoder/resnet18_eval_32px_b2",
    "dev/cmr_encoder/resnet18_eval_64px_b2",
    "dev/cmr_encoder/resnet50_eval_64px_b2",
]
B1_CASE = "dev/cmr_encoder/resnet18_eval_32px_b1"
TRAIN_CASE = "dev/cmr_encoder/resnet18_train_forward"


@functools.cache
def _encoder_variables(checkpoint_id: str, backbone: str) -> dict:
    variables, _ = convert.load(
        golden.checkpoint_path(checkpoint_id), "cmr_encoder", ResNetConfig.preset(backbone)
    )
    return variables


def _case_setup(case_id: str) -> tuple[CMREncoder, dict, jax.Array]:
    case = golden.case(case_id)
    backbone = case["model"]["config"]["backbone_model_name"]
    variables = _encoder_variables(case["weights"]["checkpoint"], backbone)
    x = nchw_to_nhwc(golden.arrays(case_id)["x"])
    return CMREncoder(ResNetConfig.preset(backbone)), variables, x


def _flax_path(torch_module: str) -> tuple[str, ...]:
    """``encoder.5.0.downsample.1`` → ``("layer2_0", "downsample_1")``; ``encoder.1`` → ``bn1``."""
    parts = torch_module.split(".")[1:]
    if parts == ["1"]:
        return ("bn1",)
    return (f"layer{int(parts[0]) - 3}_{parts[1]}", "_".join(parts[2:]))


@pytest.mark.parametrize("case_id", EVAL_CASES)
@pytest.mark.parametrize("options", ["xla defaults", "jaxecg's"])
def test_eval_features_match_reference(case_id: str, options: str) -> None:
    """Also through the options jaxecg's own steps compile with (YNNPACK dots on CPU)."""
    model, variables, x = _case_setup(case_id)
    jitted = jax.jit(
        model.apply, compiler_options=None if options == "xla defaults" else compiler_options(resnet=True)
    )
    golden.assert_matches(case_id, "out", jitted(variables, x))


def test_compiler_options_are_for_resnets_on_cpu_only() -> None:
    assert compiler_options(resnet=True, platform="cpu") == CPU_RESNET_OPTIONS
    assert compiler_options(resnet=False, platform="cpu") is None
    assert compiler_options(resnet=True, platform="gpu") is None


def test_batch_of_one_keeps_batch_axis() -> None:
    # The reference squeezes (1, 512) to (512,); we keep (B, F) and match the values.
    model, variables, x = _case_setup(B1_CASE)
    out = jax.jit(model.apply)(variables, x)
    assert out.shape == (1, model.cfg.pooled_dim)
    golden.assert_matches(B1_CASE, "out", out[0])


def test_train_forward_outputs_and_running_statistics() -> None:
    model, variables, x = _case_setup(TRAIN_CASE)
    out, updates = jax.jit(
        functools.partial(model.apply, train=True, mutable=["batch_stats"]),
        compiler_options=compiler_options(resnet=True),
    )(variables, x)
    golden.assert_matches(TRAIN_CASE, "out", out)
    stats = flax.traverse_util.flatten_dict(updates["batch_stats"])
    checked = 0
    for name in golden.expected_names(TRAIN_CASE):
        if not name.startswith("after__") or name.endswith("num_batches_tracked"):
            continue
        module, leaf = name[len("after__") :].rsplit(".", 1)
        key = (*_flax_path(module), {"running_mean": "mean", "running_var": "var"}[leaf])
        golden.assert_matches(TRAIN_CASE, name, stats[key])
        checked += 1
    assert checked == len(stats) == 2 * 20  # every BatchNorm of ResNet18: mean and var


def test_param_tree_matches_converted_checkpoint() -> None:
    # Every leaf the model creates is filled by the checkpoint, with the same shape, and vice versa.
    for backbone, ckpt in [
        ("resnet18", "dev/checkpoints/cmr_image_encoder_resnet18"),
        ("resnet50", "dev/checkpoints/cmr_image_encoder_resnet50"),
    ]:
        model = CMREncoder(ResNetConfig.preset(backbone))
        abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        loaded = _encoder_variables(ckpt, backbone)
        assert jax.tree.map(np.shape, abstract) == jax.tree.map(np.shape, dict(loaded))


def test_presets_and_pooled_dim() -> None:
    assert ResNetConfig.preset("resnet18").pooled_dim == 512
    assert ResNetConfig.preset("resnet50").pooled_dim == 2048
    cfg = ResNetConfig.preset("resnet50")
    assert ResNetConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_backbone_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet34'.*resnet18.*resnet50"):
        ResNetConfig(backbone="resnet34")
    with pytest.raises(ConfigError, match="resnet34"):
        ResNetConfig.from_dict({"backbone": "resnet34"})
    with pytest.raises(ConfigError, match="resnet101"):
        ResNetConfig.preset("resnet101")


def test_image_batch_must_be_4d_nhwc() -> None:
    model = CMREncoder(ResNetConfig.preset("resnet18"))
    with pytest.raises(ValueError, match=r"4-D NHWC.*\(3, 32, 32\)"):
        model.init(jax.random.key(0), jnp.zeros((3, 32, 32)))
    with pytest.raises(ValueError, match="nchw_to_nhwc"):
        model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match=r"4-D NCHW"):
        nchw_to_nhwc(jnp.zeros((3, 32, 32)))
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(nchw_to_nhwc(x), x.transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------- BatchNorm


def _torch_bn_steps(x_steps: list[np.ndarray], scale: np.ndarray, bias: np.ndarray):
    bn = torch.nn.BatchNorm2d(scale.shape[0])
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(scale))
        bn.bias.copy_(torch.from_numpy(bias))
    bn.train()
    outs = [bn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1) for x in x_steps]
    return [o.detach().numpy() for o in outs], bn.running_mean.numpy(), bn.running_var.numpy()


def test_batchnorm_train_steps_match_torch() -> None:
    rng = np.random.default_rng(0)
    xs = [rng.normal(2.0, 3.0, (3, 4, 5, 6)).astype(np.float32) for _ in range(3)]
    scale = rng.normal(1.0, 0.2, 6).astype(np.float32)
    bias = rng.normal(0.0, 0.2, 6).astype(np.float32)
    want_outs, want_mean, want_var = _torch_bn_steps(xs, scale, bias)

    bn = BatchNorm()
    variables = bn.init(jax.random.key(0), xs[0], use_running_average=True)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(6))
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(6))
    params = {"scale": scale, "bias": bias}
    stats = variables["batch_stats"]
    for x, want in zip(xs, want_outs):
        out, upd = bn.apply(
            {"params": params, "batch_stats": stats},
            x,
            use_running_average=False,
            mutable=["batch_stats"],
        )
        stats = upd["batch_stats"]
        np.testing.assert_allclose(out, want, atol=2e-6)
    np.testing.assert_allclose(stats["mean"], want_mean, atol=1e-6)
    # Unbiased running variance: a biased update would be off by n/(n-1) = 60/59 here.
    np.testing.assert_allclose(stats["var"], want_var, rtol=1e-6)
    eval_out = bn.apply({"params": params, "batch_stats": stats}, xs[0], use_running_average=True)
    want_eval = (xs[0] - want_mean) / np.sqrt(want_var + 1e-5) * scale + bias
    np.testing.assert_allclose(eval_out, want_eval, atol=2e-6)


def test_batchnorm_rejects_single_value_per_channel() -> None:
    bn = BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.apply(variables, jnp.ones((1, 3)), mutable=["batch_stats"])


def test_synchronised_batchnorm_equals_global_batch() -> None:
    # Under shard_map with axis_name, every device normalises with global-batch statistics.
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    x = np.random.default_rng(1).normal(1.0, 2.0, (8, 3, 3, 5)).astype(np.float32)
    variables = BatchNorm().init(jax.random.key(0), x, use_running_average=True)

    def apply(axis_name):
        return lambda v, xb: BatchNorm(axis_name=axis_name).apply(
            v, xb, use_running_average=False, mutable=["batch_stats"]
        )

    want_out, want_upd = apply(None)(variables, x)
    sharded = jax.shard_map(
        apply("data"), mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P())
    )
    out, upd = jax.jit(sharded)(variables, x)
    np.testing.assert_allclose(out, want_out, atol=1e-6)
    for leaf in ("mean", "var"):
        np.testing.assert_allclose(
            upd["batch_stats"][leaf], want_upd["batch_stats"][leaf], rtol=1e-6, atol=1e-7
        )
    # Per-device statistics (no axis_name) differ, so the check above is not vacuous.
    local = jax.jit(
        jax.shard_map(
            apply(None),
            mesh=mesh,
            in_specs=(P(), P("data")),
            out_specs=(P("data"), P()),
            check_vma=False,
        )
    )(variables, x)[0]
    assert np.abs(np.asarray(local) - np.asarray(want_out)).max() > 1e-2
