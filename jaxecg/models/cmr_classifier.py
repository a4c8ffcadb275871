"""CMR classifier: ResNet encoder + linear or MLP head, tuned or frozen (docs/reference.md#heads).

Param tree: ``encoder/<CMREncoder tree>`` and ``head/{kernel,bias}`` (linear) or
``head/{fc1,fc2,fc3}`` (mlp) — the reference's ``encoder.*`` and ``head.*``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.typing import ArrayLike

from jaxecg.config import ConfigError
from jaxecg.losses.classification import cross_entropy
from jaxecg.models.heads import torch_dense
from jaxecg.models.precision import PrecisionConfig, share_precision
from jaxecg.models.resnet import CMREncoder, ResNetConfig


@dataclasses.dataclass(frozen=True)
class CMRClassifierConfig(PrecisionConfig):
    """CMR classifier config (reference ``CMRClassifier`` arguments).

    ``classifier_type``: ``"linear"`` (Linear F→classes) or ``"mlp"`` (F→F/4→F/16→classes,
    ReLU between). ``freeze_encoder``: train the head only (see :class:`CMRClassifier`).
    ``class_weights``: per-class weights of the cross-entropy criterion (reference ``weights``).
    ``dtype``/``param_dtype`` (see :mod:`jaxecg.models.precision`) hold for the whole model;
    the encoder follows them.
    """

    encoder: ResNetConfig = ResNetConfig()
    num_classes: int = 2
    classifier_type: Literal["linear", "mlp"] = "linear"
    freeze_encoder: bool = False
    class_weights: tuple[float, ...] | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        name: {"encoder": preset} for name, preset in ResNetConfig.PRESETS.items()
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder", share_precision(self, self.encoder))
        if self.classifier_type not in ("linear", "mlp"):
            raise ConfigError(
                "CMRClassifierConfig.classifier_type: expected 'linear' or 'mlp', "
                f"got {self.classifier_type!r}"
            )
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            raise ConfigError(
                f"CMRClassifierConfig.class_weights: expected {self.num_classes} weights "
                f"(num_classes), got {len(self.class_weights)}"
            )


class MLPHead(nn.Module):
    """``fc1`` F→F/4, ReLU, ``fc2`` →F/16, ReLU, ``fc3`` →classes: ``(B, F) → (B, classes)``."""

    num_classes: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        dim = h.shape[-1]
        dense = functools.partial(torch_dense, dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.relu(dense(dim // 4, dim, name="fc1")(h))
        x = nn.relu(dense(dim // 16, dim // 4, name="fc2")(x))
        return dense(self.num_classes, dim // 16, name="fc3")(x)


class CMRClassifier(nn.Module):
    """NHWC images ``(B, H, W, C)`` → logits ``(B, num_classes)``.

    ``freeze_encoder=True`` makes the encoder a fixed feature extractor: its features pass
    through ``stop_gradient`` and its BatchNorms always run in inference mode (running
    statistics, never updated), so a frozen encoder is a deterministic function of its
    weights and a linear probe cannot drift it. The reference only sets
    ``requires_grad=False`` and leaves the module in train mode, so its frozen encoder still
    normalises with batch statistics and moves its running statistics; we deliberately do
    not copy that. ``stop_gradient`` zeroes the encoder's gradients but an optimiser with
    weight decay would still move its weights: mask them out of the optimiser too.
    """

    cfg: CMRClassifierConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.cfg
        features = CMREncoder(cfg.encoder, name="encoder")(
            x, train=train and not cfg.freeze_encoder
        )
        if cfg.freeze_encoder:
            features = jax.lax.stop_gradient(features)
        if cfg.classifier_type == "mlp":
            return MLPHead(cfg.num_classes, name="head", **cfg.dtypes)(features)
        return torch_dense(cfg.num_classes, cfg.encoder.pooled_dim, name="head", **cfg.dtypes)(
            features
        )


def cmr_classifier_loss(
    cfg: CMRClassifierConfig, logits: ArrayLike, targets: ArrayLike
) -> jax.Array:
    """The reference criterion: ``CrossEntropyLoss(weight=class_weights)(logits, argmax(y))``.

    ``targets``: one-hot ``(B, C)`` (the reference's labels, reduced with ``argmax``) or
    integer classes ``(B,)``. The mean is weighted by the targets' class weights.
    """
    targets = jnp.asarray(targets)
    if targets.ndim == 2:
        targets = jnp.argmax(targets, axis=-1)
    return cross_entropy(logits, targets, class_weight=cfg.class_weights)
