"""Compute and parameter dtypes of the models, in Flax's ``dtype``/``param_dtype`` convention.

``dtype`` is what every matmul and convolution computes in (``"bfloat16"`` for mixed
precision), ``param_dtype`` what the parameters are stored in (fp32 master weights by
default). Whatever the compute dtype, the models keep in fp32 what bf16 would spoil:
LayerNorm/BatchNorm statistics and their normalisation, softmax, the residual sums of
the ViT, the sin-cos tables and every loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, TypeVar

import jax.numpy as jnp

from jaxecg.config import Config, ConfigError

DTypeName = Literal["float32", "bfloat16", "float16"]
DEFAULT_DTYPE: DTypeName = "float32"

C = TypeVar("C", bound="PrecisionConfig")


@dataclasses.dataclass(frozen=True)
class PrecisionConfig(Config):
    """``dtype`` (compute) and ``param_dtype`` (storage) of a model; both float32 by default."""

    dtype: DTypeName = DEFAULT_DTYPE
    param_dtype: DTypeName = DEFAULT_DTYPE

    @property
    def dtypes(self) -> dict[str, Any]:
        """``{"dtype": ..., "param_dtype": ...}`` as numpy dtypes, the keywords of Flax layers."""
        return {"dtype": jnp.dtype(self.dtype), "param_dtype": jnp.dtype(self.param_dtype)}


def share_precision(config: PrecisionConfig, encoder: PrecisionConfig) -> PrecisionConfig:
    """``encoder`` with the dtypes of the model ``config`` that contains it.

    The outer model's ``dtype``/``param_dtype`` decide (``model.dtype=bfloat16``); an
    encoder field set to something else than both the default and the outer value is a
    conflict, not silently overridden.
    """
    changes = {}
    for name in ("dtype", "param_dtype"):
        outer, inner = getattr(config, name), getattr(encoder, name)
        if inner not in (outer, DEFAULT_DTYPE):
            raise ConfigError(
                f"{type(config).__name__}: encoder.{name}={inner!r} conflicts with "
                f"{name}={outer!r}; set {name} on the model, the encoder follows it"
            )
        changes[name] = outer
    return dataclasses.replace(encoder, **changes)


def with_precision(config: C, **dtypes: str) -> C:
    """``config`` with new ``dtype``/``param_dtype``, its ``encoder`` (if any) following."""
    encoder = getattr(config, "encoder", None)
    if isinstance(encoder, PrecisionConfig):
        dtypes = {**dtypes, "encoder": dataclasses.replace(encoder, **dtypes)}
    return dataclasses.replace(config, **dtypes)
