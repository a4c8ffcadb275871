"""BatchNorm with PyTorch's semantics (``nn.BatchNorm1d/2d``), for exact ResNet/SimCLR parity.

Flax's ``nn.BatchNorm`` differs from torch in two ways that matter for train-mode parity:
its momentum is the weight of the *old* statistic, and it stores the *biased* batch
variance in the running variance. This module follows torch: ``momentum`` is the weight of
the new batch statistic, normalisation uses the biased batch variance, and ``var`` is
updated with the unbiased one. torch's ``num_batches_tracked`` is not kept: with a fixed
momentum it never affects the output.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class BatchNorm(nn.Module):
    """BatchNorm over every axis but the last (``(B, C)`` or NHWC ``(B, H, W, C)``).

    Params ``scale``/``bias`` ``(C,)``; running statistics ``mean``/``var`` ``(C,)`` in the
    ``batch_stats`` collection (initialised to 0 and 1 as in torch). In training mode
    (``use_running_average=False``) the batch statistics normalise the input and update the
    running ones: ``new = (1 - momentum) * old + momentum * batch``, with ``batch`` variance
    unbiased (``n / (n - 1)``). Run with ``mutable=["batch_stats"]`` to receive the update.

    ``axis_name``: when set (inside ``shard_map``/``pmap`` over that axis), batch statistics
    are averaged across the devices of the axis, i.e. computed over the global batch
    (synchronised BatchNorm); every device must hold the same number of samples. Off by
    default, as in the reference (one GPU, or per-device statistics under DDP).

    ``dtype`` is the output's dtype (default: the input's promoted with the parameters');
    the statistics and the normalisation are always computed in (at least) fp32 and the
    running statistics are stored in fp32, whatever ``dtype``/``param_dtype``.
    """

    use_running_average: bool | None = None
    momentum: float = 0.1  # torch convention: weight of the new batch statistic
    epsilon: float = 1e-5  # torch's BatchNorm default
    axis_name: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        features = x.shape[-1]
        reduce_axes = tuple(range(x.ndim - 1))
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        out_dtype = self.dtype or jnp.result_type(x, scale)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            count = 1
            for axis in reduce_axes:
                count *= x.shape[axis]
            mean = jnp.mean(x, axis=reduce_axes)
            if self.axis_name is not None:
                count *= jax.lax.axis_size(self.axis_name)
                mean = jax.lax.pmean(mean, self.axis_name)
            if count < 2:
                raise ValueError(
                    f"BatchNorm in training mode needs more than 1 value per channel, got input "
                    f"shape {x.shape} (as torch, which raises for the same input)"
                )
            # Two-pass variance around the (global) mean, like torch; E[x^2]-E[x]^2 cancels badly.
            var = jnp.mean(jnp.square(x - mean), axis=reduce_axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
            if not self.is_initializing():
                # torch stores the unbiased batch variance in running_var (biased one normalises).
                unbiased = var * (count / (count - 1))
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased

        inv = jax.lax.rsqrt(var + self.epsilon)
        return ((x - mean) * (inv * scale) + bias).astype(out_dtype)
