"""BCE-with-logits and cross-entropy against the reference criteria and torch.

Golden ``dev/tables/losses``: BCEWithLogitsLoss(pos_weight), CrossEntropyLoss with label
smoothing for integer and probability targets, and with class weights. Other
combinations (smoothing + weights) are checked against torch directly.
"""

from __future__ import annotations

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxecg.losses import binary_cross_entropy_with_logits, cross_entropy

CASE = "dev/tables/losses"


def test_bce_with_pos_weight_matches_reference() -> None:
    a = golden.arrays(CASE)
    loss = binary_cross_entropy_with_logits(
        a["logits"], a["y_multi_hot"], pos_weight=a["pos_weight"]
    )
    golden.assert_matches(CASE, "bce_pos_weight", loss)


@pytest.mark.parametrize(
    ("name", "target", "kwargs"),
    [
        ("ce_smooth_int", "y_int", {"label_smoothing": 0.1}),
        ("ce_smooth_prob", "y_prob", {"label_smoothing": 0.1}),
        ("ce_weighted", "y_int", {"class_weight": "class_weight"}),
    ],
)
def test_cross_entropy_matches_reference(name: str, target: str, kwargs: dict) -> None:
    a = golden.arrays(CASE)
    kwargs = {k: a[v] if isinstance(v, str) else v for k, v in kwargs.items()}
    golden.assert_matches(CASE, name, cross_entropy(a["logits"], a[target], **kwargs))


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "logits": rng.normal(scale=3.0, size=(9, 4)).astype(np.float32),
        "y_int": rng.integers(0, 4, size=9),
        "y_prob": rng.dirichlet(np.ones(4), size=9).astype(np.float32),
        "y_multi_hot": (rng.uniform(size=(9, 4)) > 0.5).astype(np.float32),
        "weight": rng.uniform(0.2, 3.0, size=4).astype(np.float32),
    }


@pytest.mark.parametrize("target", ["y_int", "y_prob"])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_torch(
    batch: dict, target: str, smoothing: float, weighted: bool
) -> None:
    weight = batch["weight"] if weighted else None
    criterion = torch.nn.CrossEntropyLoss(
        weight=None if weight is None else torch.tensor(weight), label_smoothing=smoothing
    )
    expected = criterion(torch.tensor(batch["logits"]), torch.tensor(batch[target])).item()
    actual = cross_entropy(
        batch["logits"], batch[target], label_smoothing=smoothing, class_weight=weight
    )
    np.testing.assert_allclose(float(actual), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("use_pos_weight", [False, True])
def test_bce_matches_torch(batch: dict, use_pos_weight: bool) -> None:
    pos_weight = batch["weight"] if use_pos_weight else None
    criterion = torch.nn.BCEWithLogitsLoss(
        pos_weight=None if pos_weight is None else torch.tensor(pos_weight)
    )
    expected = criterion(torch.tensor(batch["logits"]), torch.tensor(batch["y_multi_hot"])).item()
    actual = binary_cross_entropy_with_logits(
        batch["logits"], batch["y_multi_hot"], pos_weight=pos_weight
    )
    np.testing.assert_allclose(float(actual), expected, rtol=1e-6, atol=1e-6)


def test_bce_is_stable_for_large_logits() -> None:
    logits = jnp.array([[80.0, -80.0]])
    loss = binary_cross_entropy_with_logits(logits, jnp.array([[0.0, 1.0]]))
    np.testing.assert_allclose(float(loss), 80.0, rtol=1e-6)


def test_losses_jit_and_grad(batch: dict) -> None:
    ce = jax.jit(
        lambda z: cross_entropy(
            z, batch["y_int"], label_smoothing=0.1, class_weight=batch["weight"]
        )
    )
    grad = jax.grad(ce)(jnp.asarray(batch["logits"]))
    # Each row's gradient sums to zero: the loss is invariant to shifting a row's logits.
    np.testing.assert_allclose(np.asarray(grad).sum(axis=1), 0.0, atol=1e-6)
    assert np.abs(np.asarray(grad)).max() > 1e-3
    bce_grad = jax.grad(lambda z: binary_cross_entropy_with_logits(z, batch["y_multi_hot"]))(
        jnp.asarray(batch["logits"])
    )
    expected = (jax.nn.sigmoid(batch["logits"]) - batch["y_multi_hot"]) / batch["logits"].size
    np.testing.assert_allclose(np.asarray(bce_grad), np.asarray(expected), atol=1e-7)


def test_shape_errors(batch: dict) -> None:
    with pytest.raises(ValueError, match=r"expected integer targets of shape \(9,\), got \(8,\)"):
        cross_entropy(batch["logits"], batch["y_int"][:8])
    with pytest.raises(ValueError, match=r"expected class_weight of shape \(4,\), got \(3,\)"):
        cross_entropy(batch["logits"], batch["y_int"], class_weight=batch["weight"][:3])
    with pytest.raises(ValueError, match=r"expected probability targets of shape \(9, 4\)"):
        cross_entropy(batch["logits"], batch["y_prob"][:, :3])
    with pytest.raises(ValueError, match=r"must match"):
        binary_cross_entropy_with_logits(batch["logits"], batch["y_multi_hot"][:3])
