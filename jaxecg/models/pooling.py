"""Max pooling with torch's gradient routing and a backward pass that XLA CPU runs fast.

``jax.grad`` of ``lax.reduce_window(max)`` lowers to ``select_and_scatter``, which XLA CPU
expands into index (iota) tensors of the padded input's size per window element — a third
of the ResNet stem's backward time in the SimCLR step. :func:`max_pool` computes the same
forward and routes each output's gradient to the *first* maximum of its window in
row-major order (torch's ``max_pool2d`` backward, and ``select_and_scatter``'s too), with
one compare and one strided pad-add per window element, all fused elementwise.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _window_views(
    x: jax.Array, window: int, stride: int, padding: int
) -> tuple[jax.Array, list[tuple[int, int]], tuple[int, int]]:
    """``x`` padded with -inf, the window offsets in row-major order, and the output size."""
    _, height, width, _ = x.shape
    padded = jnp.pad(
        x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf
    )
    out_h = (height + 2 * padding - window) // stride + 1
    out_w = (width + 2 * padding - window) // stride + 1
    offsets = [(i, j) for i in range(window) for j in range(window)]
    return padded, offsets, (out_h, out_w)


def _view(padded: jax.Array, i: int, j: int, stride: int, out_hw: tuple[int, int]) -> jax.Array:
    out_h, out_w = out_hw
    rows = slice(i, i + stride * (out_h - 1) + 1, stride)
    cols = slice(j, j + stride * (out_w - 1) + 1, stride)
    return padded[:, rows, cols]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """``torch.nn.MaxPool2d(window, stride, padding)`` over NHWC ``(B, H, W, C)``.

    Padding is -inf (never the maximum), as in torch; floor output size.
    """
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        (1, window, window, 1),
        (1, stride, stride, 1),
        ((0, 0), (padding, padding), (padding, padding), (0, 0)),
    )


def _max_pool_fwd(
    x: jax.Array, window: int, stride: int, padding: int
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    out = max_pool(x, window, stride, padding)
    return out, (x, out)


def _max_pool_bwd(
    window: int, stride: int, padding: int, residuals: tuple[jax.Array, jax.Array], grad: jax.Array
) -> tuple[jax.Array]:
    x, out = residuals
    padded, offsets, out_hw = _window_views(x, window, stride, padding)
    _, padded_h, padded_w, _ = padded.shape
    taken = jnp.zeros(out.shape, bool)
    firsts = []
    for i, j in offsets:
        first = (_view(padded, i, j, stride, out_hw) == out) & ~taken
        taken = taken | first
        firsts.append(first)
    # An input in several windows receives their shares in torch's order (output row-major,
    # i.e. window offsets in reverse), so the sums round as torch's do.
    dpadded = jnp.zeros(padded.shape, grad.dtype)
    zero = jnp.zeros((), grad.dtype)
    for (i, j), first in reversed(list(zip(offsets, firsts))):
        # This window element's share, back at its input positions (stride apart).
        dpadded = dpadded + lax.pad(
            jnp.where(first, grad, zero),
            zero,
            (
                (0, 0, 0),
                (i, padded_h - i - stride * (out_hw[0] - 1) - 1, stride - 1),
                (j, padded_w - j - stride * (out_hw[1] - 1) - 1, stride - 1),
                (0, 0, 0),
            ),
        )
    height, width = x.shape[1:3]
    return (dpadded[:, padding : padding + height, padding : padding + width],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
