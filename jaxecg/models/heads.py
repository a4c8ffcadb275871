"""Heads on top of the CMR encoder's ``(B, F)`` features (docs/reference.md#heads).

- :class:`LinearClassifier`: the online / linear-probe classifier with the reference's four
  weight-init strategies (param tree ``model/{kernel,bias}``).
- :class:`SimCLRProjectionHead`: lightly's projection head, in the lightly ≥ 1.4 layout with
  BatchNorm (``layers_0, layers_1, layers_3, layers_4``) or the lightly 1.2 layout used for
  the published image weights (``layers_0, layers_2``, with biases).
- :func:`torch_dense`: a Dense layer initialised like ``torch.nn.Linear``, so that heads trained
  from scratch start where the reference's do.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxecg.models.batchnorm import BatchNorm

InitType = Literal["normal", "xavier", "kaiming", "orthogonal"]
HeadLayout = Literal["lightly", "legacy"]

_INIT_GAIN = 0.02  # the reference's init_weights(init_gain=0.02) for xavier / orthogonal

# Kernels are (in, out): Flax's fan_in axis (-2) is torch's in_features, fan_out (-1) out_features.
_LINEAR_INITS: dict[str, jax.nn.initializers.Initializer] = {
    "normal": nn.initializers.normal(stddev=0.001),  # torch normal_(0, 0.001)
    # xavier_normal_(gain): std = gain * sqrt(2 / (fan_in + fan_out)).
    "xavier": nn.initializers.variance_scaling(_INIT_GAIN**2, "fan_avg", "normal"),
    # kaiming_normal_(a=0, mode="fan_in"): std = sqrt(2 / fan_in).
    "kaiming": nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
    # orthogonal_(gain): orthonormal along the smaller dimension, scaled by gain.
    "orthogonal": nn.initializers.orthogonal(scale=_INIT_GAIN),
}


def torch_dense(
    features: int, in_features: int, *, use_bias: bool = True, name: str, **dtypes: Any
) -> nn.Dense:
    """``nn.Dense`` initialised like ``torch.nn.Linear``: weight and bias ~ U(±1/sqrt(in));
    ``dtypes``: ``dtype``/``param_dtype``."""
    bound = 1.0 / math.sqrt(in_features)

    def bias_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nn.Dense(
        features,
        use_bias=use_bias,
        # kaiming_uniform_(a=sqrt(5)) reduces to U(±1/sqrt(fan_in)), i.e. variance 1/(3·fan_in).
        kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=bias_init,
        name=name,
        **dtypes,
    )


class LinearClassifier(nn.Module):
    """One Linear layer ``(B, in) → (B, num_classes)`` (reference ``LinearClassifier``).

    ``init_type``: ``normal`` N(0, 0.001), ``xavier`` xavier-normal gain 0.02, ``kaiming``
    kaiming-normal fan_in, ``orthogonal`` gain 0.02; the bias starts at 0.
    """

    num_classes: int
    init_type: InitType = "kaiming"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.init_type not in _LINEAR_INITS:
            raise ValueError(
                f"unknown init_type {self.init_type!r}; expected one of {sorted(_LINEAR_INITS)}"
            )
        self.model = nn.Dense(
            self.num_classes,
            kernel_init=_LINEAR_INITS[self.init_type],
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Logits ``(B, num_classes)``; ``train`` is accepted for a uniform call signature."""
        del train  # no dropout or normalisation: train and eval are the same function
        return self.model(x)


class SimCLRProjectionHead(nn.Module):
    """lightly ``SimCLRProjectionHead(F, hidden_dim, output_dim)``: ``(B, F) → (B, output_dim)``.

    ``layout="lightly"`` (lightly ≥ 1.4, the reference's): Linear(no bias) → BN → ReLU →
    Linear(no bias) → BN, modules ``layers_0, layers_1, layers_3, layers_4``.
    ``layout="legacy"`` (lightly 1.2.22, MMCL's published weights): Linear → ReLU → Linear,
    modules ``layers_0, layers_2``. In training mode the BatchNorms use batch statistics and
    update ``batch_stats`` (apply with ``mutable=["batch_stats"]``).
    """

    hidden_dim: int
    output_dim: int = 128
    layout: HeadLayout = "lightly"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
        if self.layout not in ("lightly", "legacy"):
            raise ValueError(f"unknown head layout {self.layout!r}; expected 'lightly' or 'legacy'")
        if h.ndim != 2:
            raise ValueError(f"projection head expects features (B, F), got shape {h.shape}")
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        if self.layout == "legacy":
            x = nn.relu(torch_dense(self.hidden_dim, h.shape[-1], name="layers_0", **dtypes)(h))
            return torch_dense(self.output_dim, self.hidden_dim, name="layers_2", **dtypes)(x)

        def bn(name: str) -> BatchNorm:
            return BatchNorm(use_running_average=not train, name=name, **dtypes)

        # lightly drops the Linear biases when a BatchNorm follows (they would cancel).
        dense = functools.partial(torch_dense, use_bias=False, **dtypes)
        x = dense(self.hidden_dim, h.shape[-1], name="layers_0")(h)
        x = nn.relu(bn("layers_1")(x))
        x = dense(self.output_dim, self.hidden_dim, name="layers_3")(x)
        return bn("layers_4")(x)
