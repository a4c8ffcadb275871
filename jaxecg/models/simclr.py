"""SimCLR for CMR images: ResNet encoder + projection head (docs/reference.md#simclr).

Param tree: ``encoder_imaging/<CMREncoder tree>`` and ``projection_head/layers_*`` — the
reference's ``encoder_imaging.encoder.*`` and ``projection_head.layers.*``. The reference's
online classifier (``classifier.model.*``) is a separate :class:`~jaxecg.models.heads.
LinearClassifier` with its own optimiser, trained on ``stop_gradient(encode(view0))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
from flax import linen as nn

from jaxecg.models.heads import HeadLayout, InitType, SimCLRProjectionHead
from jaxecg.models.precision import PrecisionConfig, share_precision
from jaxecg.models.resnet import CMREncoder, ResNetConfig


@dataclasses.dataclass(frozen=True)
class SimCLRConfig(PrecisionConfig):
    """SimCLR model config.

    ``encoder``: the ResNet. ``projection_dim``: output of the projection head (128); its
    hidden size is the encoder's pooled dim. ``head_layout``: ``"lightly"`` (with BatchNorm,
    the reference's) or ``"legacy"`` (lightly 1.2, the published MMCL weights). ``temperature``: NT-Xent
    temperature; ``num_classes``/``init_strat``: the online :class:`LinearClassifier` trained
    alongside (reference names kept). ``dtype``/``param_dtype`` (see
    :mod:`jaxecg.models.precision`) hold for the whole model; the encoder follows them.
    """

    encoder: ResNetConfig = ResNetConfig()
    projection_dim: int = 128
    head_layout: HeadLayout = "lightly"
    temperature: float = 0.1
    num_classes: int = 2
    init_strat: InitType = "kaiming"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        name: {"encoder": preset} for name, preset in ResNetConfig.PRESETS.items()
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder", share_precision(self, self.encoder))


class SimCLR(nn.Module):
    """NHWC images ``(B, H, W, C)`` → projections ``(B, projection_dim)``; ``encode`` → ``(B, F)``.

    ``train=True`` uses batch statistics in every BatchNorm and updates ``batch_stats``
    (apply with ``mutable=["batch_stats"]``).
    """

    cfg: SimCLRConfig

    def setup(self) -> None:
        self.encoder_imaging = CMREncoder(self.cfg.encoder)
        self.projection_head = SimCLRProjectionHead(
            hidden_dim=self.cfg.encoder.pooled_dim,
            output_dim=self.cfg.projection_dim,
            layout=self.cfg.head_layout,
            **self.cfg.dtypes,
        )

    def encode(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Encoder features ``(B, F)`` of NHWC images (what the online classifier sees)."""
        return self.encoder_imaging(x, train=train)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.projection_head(self.encode(x, train=train), train=train)
