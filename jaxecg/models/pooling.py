"""Max pooling with torch's gradient routing and a backward pass that XLA CPU runs fast.

``jax.grad`` of ``lax.reduce_window(max)`` lowers to ``select_and_scatter``, which XLA CPU
expands into index (iota) tensors of the padded input's size per window element — a third
of the ResNet stem's backward time in the SimCLR step. :func:`max_pool` computes the
maximum and the offset of each window's *first* maximum in row-major order in one
elementwise pass, keeps only the offsets (int8) for the backward, and routes each
output's gradient there (torch's ``max_pool2d`` backward, and ``select_and_scatter``'s
too) with one strided pad-add per window element.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _offsets(window: int) -> list[tuple[int, int]]:
    """The window's element offsets in row-major order (torch's scan order)."""
    return [(i, j) for i in range(window) for j in range(window)]


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
    return padded, _offsets(window), (out_h, out_w)


def _view(padded: jax.Array, i: int, j: int, stride: int, out_hw: tuple[int, int]) -> jax.Array:
    out_h, out_w = out_hw
    rows = slice(i, i + stride * (out_h - 1) + 1, stride)
    cols = slice(j, j + stride * (out_w - 1) + 1, stride)
    return padded[:, rows, cols]


def _max_and_argmax(
    x: jax.Array, window: int, stride: int, padding: int
) -> tuple[jax.Array, jax.Array]:
    """The pooled maxima and, per output, the row-major offset of its window's first maximum.

    One elementwise pass over the window views: the maximum and its offset come from the
    same values. (Finding the offset in the backward by ``x == max`` instead breaks when
    XLA recomputes ``x``'s producer there with other rounding — it fuses elementwise
    producers into each consumer.)
    """
    padded, offsets, out_hw = _window_views(x, window, stride, padding)
    best = _view(padded, *offsets[0], stride, out_hw)
    which = jnp.zeros(best.shape, jnp.int8 if len(offsets) <= 127 else jnp.int32)
    for k, (i, j) in enumerate(offsets[1:], start=1):
        view = _view(padded, i, j, stride, out_hw)
        # Strictly greater: on ties the first maximum stays. A NaN wins, as in torch.
        later = (view > best) | jnp.isnan(view)
        best = jnp.where(later, view, best)
        which = jnp.where(later, k, which)
    return best, which


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """``torch.nn.MaxPool2d(window, stride, padding)`` over NHWC ``(B, H, W, C)``.

    Padding is -inf (never the maximum), as in torch; floor output size.
    """
    return _max_and_argmax(x, window, stride, padding)[0]


def _max_pool_fwd(
    x: jax.Array, window: int, stride: int, padding: int
) -> tuple[jax.Array, tuple[jax.Array, tuple[int, ...]]]:
    out, which = _max_and_argmax(x, window, stride, padding)
    return out, (which, x.shape)


def _max_pool_bwd(
    window: int,
    stride: int,
    padding: int,
    residuals: tuple[jax.Array, tuple[int, ...]],
    grad: jax.Array,
) -> tuple[jax.Array]:
    which, shape = residuals
    batch, height, width, channels = shape
    padded_h, padded_w = height + 2 * padding, width + 2 * padding
    out_h, out_w = which.shape[1:3]
    offsets = _offsets(window)
    # An input in several windows receives their shares in torch's order (output row-major,
    # i.e. window offsets in reverse), so the sums round as torch's do.
    dpadded = jnp.zeros((batch, padded_h, padded_w, channels), grad.dtype)
    zero = jnp.zeros((), grad.dtype)
    for k in reversed(range(len(offsets))):
        i, j = offsets[k]
        # This window element's share, back at its input positions (stride apart).
        dpadded = dpadded + lax.pad(
            jnp.where(which == k, grad, zero),
            zero,
            (
                (0, 0, 0),
                (i, padded_h - i - stride * (out_h - 1) - 1, stride - 1),
                (j, padded_w - j - stride * (out_w - 1) - 1, stride - 1),
                (0, 0, 0),
            ),
        )
    return (dpadded[:, padding : padding + height, padding : padding + width],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
