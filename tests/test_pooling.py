"""max_pool: torch's MaxPool2d forward and gradient routing, bit for bit, ties included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxecg.models.pooling import max_pool


def _torch_pool(x: np.ndarray, g: np.ndarray, window: int, stride: int, padding: int):
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, window, stride, padding)
    yt.backward(torch.tensor(g).permute(0, 3, 1, 2))
    return yt.detach().permute(0, 2, 3, 1).numpy(), xt.grad.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("size", [9, 10])
# (3, 1, 1): an input in up to 9 windows, so the order of the gradient sums shows.
@pytest.mark.parametrize(("window", "stride", "padding"), [(3, 2, 1), (3, 1, 1)])
def test_forward_and_gradient_equal_torch_bitwise(size, window, stride, padding) -> None:
    rng = np.random.default_rng(size)
    # ReLU outputs: many zeros, so most windows have ties; plus a block of equal maxima.
    x = np.maximum(rng.standard_normal((2, size, size, 3)), 0).astype(np.float32)
    x[0, :4, :4, 0] = 1.5
    fwd = jax.jit(lambda x: max_pool(x, window, stride, padding))
    out = fwd(x)
    g = rng.standard_normal(out.shape).astype(np.float32)
    grad = jax.jit(lambda x, g: jax.vjp(lambda y: max_pool(y, window, stride, padding), x)[1](g))
    (dx,) = grad(x, g)
    expected_out, expected_dx = _torch_pool(x, g, window, stride, padding)
    np.testing.assert_array_equal(np.asarray(out), expected_out)
    np.testing.assert_array_equal(np.asarray(dx), expected_dx)


def test_gradient_equals_autodiff_of_reduce_window() -> None:
    """Same routing as jax's own select_and_scatter gradient (first maximum wins)."""
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((2, 13, 11, 4)), 1).astype(np.float32)  # ties
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))

    def reference(y):
        return jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pads)

    out, vjp = jax.vjp(lambda y: max_pool(y, 3, 2, 1), x)
    expected, expected_vjp = jax.vjp(reference, x)
    g = rng.standard_normal(out.shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(vjp(g)[0]), np.asarray(expected_vjp(g)[0]))


def test_gradient_of_a_resnet_stem_equals_reduce_window_autodiff() -> None:
    """conv -> batch-statistics BatchNorm -> ReLU -> pool in one jitted gradient, as in the
    ResNet: XLA fuses the BatchNorm arithmetic into both passes, so the routing must not
    depend on recomputing the pool's input (an equality test against the maxima in the
    backward did, and lost gradients there)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 96, 96, 3)).astype(np.float32)
    kernel = (0.1 * rng.standard_normal((7, 7, 3, 16))).astype(np.float32)
    g = rng.standard_normal((4, 24, 24, 16)).astype(np.float32)
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))

    def loss(kernel, pool):
        dims = ("NHWC", "HWIO", "NHWC")
        h = jax.lax.conv_general_dilated(
            x, kernel, (2, 2), ((3, 3), (3, 3)), dimension_numbers=dims
        )
        mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
        return jnp.sum(g * pool(jax.nn.relu((h - mean) * jax.lax.rsqrt(var + 1e-5))))

    def reference(y):
        return jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pads)

    ours = jax.jit(jax.grad(lambda k: loss(k, lambda y: max_pool(y, 3, 2, 1))))(kernel)
    expected = jax.jit(jax.grad(lambda k: loss(k, reference)))(kernel)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=0, atol=1e-5 * scale)
