"""NT-Xent against the reference (loss, logits, labels), across 4 devices under shard_map,
and the top-k accuracy of its logits."""

from __future__ import annotations

import functools

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from jaxecg.losses import nt_xent
from jaxecg.metrics import top_k_accuracy

CASE = "dev/simclr/ntxent"
DEVICES = 4


def test_matches_reference() -> None:
    arrays = golden.arrays(CASE)
    loss, logits, labels = nt_xent(arrays["z0"], arrays["z1"], temperature=0.1)
    golden.assert_matches(CASE, "loss", loss)
    golden.assert_matches(CASE, "logits", logits)
    golden.assert_matches(CASE, "labels", labels)


def _global_batch(n_per_device: int = 3, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    m = DEVICES * n_per_device
    z0 = rng.normal(size=(m, dim)).astype(np.float32)
    z1 = (z0 + 0.5 * rng.normal(size=(m, dim))).astype(np.float32)
    return z0, z1


def _sharded_nt_xent():
    assert jax.device_count() >= DEVICES, "tests/conftest.py forces 4 host devices"
    mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(AxisType.Auto,))
    return jax.shard_map(
        functools.partial(nt_xent, temperature=0.1, axis_name="data"),
        mesh=mesh,
        in_specs=(P("data"), P("data")),
        out_specs=(P(), P("data"), P("data")),
    )


def test_sharded_loss_and_gradient_equal_single_device() -> None:
    z0, z1 = _global_batch()
    sharded = _sharded_nt_xent()
    loss, logits, labels = jax.jit(sharded)(z0, z1)
    want_loss, want_logits, _ = nt_xent(z0, z1, temperature=0.1)
    np.testing.assert_allclose(loss, want_loss, rtol=0, atol=1e-6)

    # Device r holds rows r*n..(r+1)*n of each view, against all 2m-1 global columns, with
    # labels offset by its rank.
    n, m = z0.shape[0] // DEVICES, z0.shape[0]
    assert logits.shape == (DEVICES * 2 * n, 2 * m - 1)
    for r in range(DEVICES):
        block = logits[r * 2 * n : (r + 1) * 2 * n]
        rows = np.r_[r * n : (r + 1) * n, m + r * n : m + (r + 1) * n]
        np.testing.assert_allclose(block, want_logits[rows], atol=1e-5)
        own = np.arange(n) + r * n
        np.testing.assert_array_equal(labels[r * 2 * n : (r + 1) * 2 * n], np.tile(own, 2))

    def single(a, b):
        return nt_xent(a, b, temperature=0.1)[0]

    def gathered(a, b):
        return sharded(a, b)[0]

    want_grads = jax.jit(jax.grad(single, argnums=(0, 1)))(z0, z1)
    grads = jax.jit(jax.grad(gathered, argnums=(0, 1)))(z0, z1)
    for got, want in zip(grads, want_grads):
        assert float(jnp.abs(want).max()) > 1e-3  # a real gradient, not zeros on both sides
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_one_sample_per_device_is_enough_when_gathered() -> None:
    z0, z1 = _global_batch(n_per_device=1)
    loss = jax.jit(_sharded_nt_xent())(z0, z1)[0]
    np.testing.assert_allclose(loss, nt_xent(z0, z1)[0], atol=1e-6)


def test_invalid_inputs_are_rejected() -> None:
    z = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match="at least 2 samples"):
        nt_xent(z[:1], z[:1])
    for bad in (0.0, 1e-8, 1e-9, -0.5):
        with pytest.raises(ValueError, match="Illegal temperature"):
            nt_xent(z, z, temperature=bad)
    with pytest.raises(ValueError, match=r"same shape.*\(4, 8\).*\(3, 8\)"):
        nt_xent(z, z[:3])
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(z[0], z[0])


def test_top_k_accuracy_of_contrastive_logits() -> None:
    arrays = golden.arrays(CASE)
    _, logits, labels = nt_xent(arrays["z0"], arrays["z1"])
    # Expected from the definition: the label's rank among its row's logits.
    label_logit = np.take_along_axis(np.asarray(logits), np.asarray(labels)[:, None], axis=1)
    rank = np.sum(np.asarray(logits) > label_logit, axis=1)
    for k in (1, 5):
        assert float(top_k_accuracy(logits, labels, k)) == pytest.approx(np.mean(rank < k))
    top1 = top_k_accuracy(jnp.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]), jnp.array([2, 0]), 1)
    top2 = top_k_accuracy(jnp.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]), jnp.array([2, 0]), 2)
    assert float(top1) == 0.5 and float(top2) == 1.0
    with pytest.raises(ValueError, match="k=4"):
        top_k_accuracy(jnp.zeros((2, 3)), jnp.array([0, 1]), 4)
