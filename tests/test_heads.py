"""LinearClassifier (init strategies, golden forward) and CMRClassifier (golden forward,
MLP head, weighted criterion, frozen encoder)."""

from __future__ import annotations

import functools
import io
import lzma

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import convert
from jaxecg.models import (
    CMRClassifier,
    CMRClassifierConfig,
    LinearClassifier,
    MLPHead,
    cmr_classifier_loss,
    nchw_to_nhwc,
)

CMR_CASE = "dev/cmr_classifier/resnet18_mlp"
CMR_CHECKPOINT = "dev/checkpoints/cmr_classifier_resnet18_mlp"


def _init_kernel(init_type: str, fan_in: int, fan_out: int, seed: int = 0) -> np.ndarray:
    model = LinearClassifier(num_classes=fan_out, init_type=init_type)
    params = model.init(jax.random.key(seed), jnp.zeros((1, fan_in)))["params"]
    np.testing.assert_array_equal(params["model"]["bias"], np.zeros(fan_out))
    return np.asarray(params["model"]["kernel"])


# ------------------------------------------------------------------------- LinearClassifier


def test_linear_classifier_matches_reference() -> None:
    case_id = "dev/linear_classifier/forward"
    variables, _ = convert.load(
        golden.checkpoint_path(golden.case(case_id)["weights"]["checkpoint"]),
        "linear_classifier",
        {"in_features": 512, "num_classes": 5},
    )
    assert jax.tree.map(np.shape, variables["params"]) == {
        "model": {"kernel": (512, 5), "bias": (5,)}
    }
    logits = LinearClassifier(num_classes=5).apply(variables, golden.arrays(case_id)["h"])
    golden.assert_matches(case_id, "logits", logits)


# Square 256x256 kernels: normal std 0.001, xavier 0.02*sqrt(2/512) = 0.00125,
# kaiming sqrt(2/256) = 0.088; orthogonal has xavier's std, so it is told apart by Q^T Q.
@pytest.mark.parametrize(
    ("init_type", "expected_std"),
    [("normal", 0.001), ("xavier", 0.02 * np.sqrt(2 / 512)), ("kaiming", np.sqrt(2 / 256))],
)
def test_gaussian_init_std(init_type: str, expected_std: float) -> None:
    kernel = _init_kernel(init_type, 256, 256)
    # 65536 samples: the std estimate is within ~0.3% (1 sigma); 3% separates the strategies.
    assert abs(kernel.mean()) < 0.02 * expected_std
    assert kernel.std() == pytest.approx(expected_std, rel=0.03)
    # Gaussian (not uniform, not orthogonal): kurtosis 3.
    kurtosis = np.mean((kernel - kernel.mean()) ** 4) / kernel.var() ** 2
    assert kurtosis == pytest.approx(3.0, abs=0.1)
    gram = kernel.T @ kernel / (256 * expected_std**2)
    assert np.abs(gram - np.eye(256)).max() > 0.1  # random Gaussian columns are not orthogonal


def test_orthogonal_init_is_scaled_orthonormal() -> None:
    # torch orthogonal_ on weight (out=32, in=512): rows orthonormal * gain, i.e. for our
    # (in, out) kernel K: K^T K = gain^2 I.
    kernel = _init_kernel("orthogonal", 512, 32).astype(np.float64)
    np.testing.assert_allclose(kernel.T @ kernel, 0.02**2 * np.eye(32), atol=1e-9)
    # Square: orthogonal in both directions.
    square = _init_kernel("orthogonal", 64, 64).astype(np.float64)
    np.testing.assert_allclose(square @ square.T, 0.02**2 * np.eye(64), atol=1e-9)
    np.testing.assert_allclose(square.T @ square, 0.02**2 * np.eye(64), atol=1e-9)
    # Different seeds give different matrices (a random orthogonal draw, not a fixed one).
    assert not np.allclose(_init_kernel("orthogonal", 64, 64, seed=1), square)


def test_unknown_init_type_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown init_type 'uniform'.*kaiming"):
        LinearClassifier(num_classes=2, init_type="uniform").init(
            jax.random.key(0), jnp.zeros((1, 4))
        )


# ---------------------------------------------------------------------------- CMRClassifier


def _class_weights() -> np.ndarray:
    raw = lzma.decompress(golden.checkpoint_path(CMR_CHECKPOINT).read_bytes())
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)["state_dict"]
    return state["criterion.weight"].numpy()


@functools.cache
def _cmr_setup() -> tuple[CMRClassifierConfig, dict]:
    cfg = CMRClassifierConfig.preset(
        "resnet18",
        num_classes=5,
        classifier_type="mlp",
        class_weights=tuple(float(w) for w in _class_weights()),
    )
    variables, _ = convert.load(golden.checkpoint_path(CMR_CHECKPOINT), "cmr_classifier", cfg)
    return cfg, variables


def test_cmr_classifier_matches_reference() -> None:
    cfg, variables = _cmr_setup()
    arrays = golden.arrays(CMR_CASE)
    logits = jax.jit(CMRClassifier(cfg).apply)(variables, nchw_to_nhwc(arrays["x"]))
    golden.assert_matches(CMR_CASE, "logits", logits)

    head_out = MLPHead(cfg.num_classes).apply({"params": variables["params"]["head"]}, arrays["h"])
    golden.assert_matches(CMR_CASE, "head_out", head_out)

    loss = cmr_classifier_loss(cfg, golden.arrays(CMR_CASE)["logits"], arrays["y"])
    golden.assert_matches(CMR_CASE, "loss", loss)
    # The class weights matter: the unweighted loss is different.
    unweighted = cmr_classifier_loss(cfg.replace(class_weights=None), logits, arrays["y"])
    assert abs(float(unweighted) - float(loss)) > 1e-3


def test_cmr_classifier_head_trees() -> None:
    x = jnp.zeros((2, 32, 32, 3))
    for classifier_type, head in [
        ("linear", {"kernel": (512, 3), "bias": (3,)}),
        (
            "mlp",
            {
                "fc1": {"kernel": (512, 128), "bias": (128,)},
                "fc2": {"kernel": (128, 32), "bias": (32,)},
                "fc3": {"kernel": (32, 3), "bias": (3,)},
            },
        ),
    ]:
        cfg = CMRClassifierConfig.preset(
            "resnet18", num_classes=3, classifier_type=classifier_type
        )
        abstract = jax.eval_shape(CMRClassifier(cfg).init, jax.random.key(0), x)
        assert jax.tree.map(lambda a: a.shape, abstract["params"]["head"]) == head
        assert set(abstract["params"]) == {"encoder", "head"}


def test_frozen_encoder_gets_no_gradient_and_keeps_statistics() -> None:
    cfg, variables = _cmr_setup()
    frozen = CMRClassifier(cfg.replace(freeze_encoder=True))
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    y = jnp.array([0, 1, 2, 3])

    def loss_fn(params, model):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x, train=True, mutable=["batch_stats"],
        )
        return cmr_classifier_loss(cfg, logits, y), (logits, updates)

    grads, (logits, updates) = jax.jit(
        jax.grad(functools.partial(loss_fn, model=frozen), has_aux=True)
    )(variables["params"])
    encoder_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["encoder"]))
    head_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["head"]))
    assert encoder_norm == 0.0 and head_norm > 0.0
    # BatchNorm ran in inference mode: statistics unchanged, logits equal to eval mode.
    for new, old in zip(
        jax.tree.leaves(updates["batch_stats"]), jax.tree.leaves(variables["batch_stats"])
    ):
        np.testing.assert_array_equal(new, old)
    np.testing.assert_allclose(logits, jax.jit(frozen.apply)(variables, x), atol=1e-6)

    # Not frozen, the same train-mode call moves the encoder's statistics.
    _, updates = jax.jit(
        functools.partial(CMRClassifier(cfg).apply, train=True, mutable=["batch_stats"])
    )(variables, x)
    moved = updates["batch_stats"]["encoder"]["bn1"]["mean"]
    assert not np.allclose(moved, variables["batch_stats"]["encoder"]["bn1"]["mean"])


def test_cmr_classifier_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet34'"):
        CMRClassifierConfig.from_dict({"encoder": {"backbone": "resnet34"}})
    with pytest.raises(ValueError, match="classifier_type"):
        CMRClassifierConfig(classifier_type="transformer")
    with pytest.raises(ValueError, match="expected 5 weights"):
        CMRClassifierConfig(num_classes=5, class_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="4-D NHWC"):
        cfg = CMRClassifierConfig.preset("resnet18")
        CMRClassifier(cfg).init(jax.random.key(0), jnp.zeros((32, 32, 3)))
