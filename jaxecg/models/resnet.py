"""CMR image encoder: torchvision ResNet18/50 without ``fc``, in NHWC (docs/reference.md#resnet).

The parameter tree mirrors the reference's ``nn.Sequential(*resnet.children()[:-1])``:
``conv1``, ``bn1``, ``layer{k}_{j}/{conv1,bn1,conv2,bn2[,conv3,bn3],downsample_0,downsample_1}``
(torch ``encoder.0``, ``encoder.1``, ``encoder.{3+k}.{j}.*``), so conversion is a renaming.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxecg.config import ConfigError
from jaxecg.models.batchnorm import BatchNorm
from jaxecg.models.pooling import max_pool
from jaxecg.models.precision import PrecisionConfig

# torchvision: (block type, blocks per stage); stage widths are 64, 128, 256, 512.
_ARCHITECTURES: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
_STAGE_WIDTHS = (64, 128, 256, 512)
_BOTTLENECK_EXPANSION = 4

# torchvision's conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


@dataclasses.dataclass(frozen=True)
class ResNetConfig(PrecisionConfig):
    """ResNet encoder config: ``backbone`` ``"resnet18"`` (512 features) or ``"resnet50"`` (2048).

    Under ``jit`` with a sharded batch, BatchNorm sees the global batch without an axis name
    (docs/reference.md#batchnorm); inside ``shard_map`` use ``BatchNorm(axis_name=...)``.
    ``dtype``/``param_dtype``: see :mod:`jaxecg.models.precision` (convolutions in ``dtype``,
    BatchNorm statistics and normalisation in fp32).
    """

    backbone: str = "resnet50"
    in_channels: int = 3

    RETIRED: ClassVar[dict[str, tuple[Any, str]]] = {
        "bn_axis_name": (None, "under jit BatchNorm already sees the global batch")
    }

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        name: {"backbone": name} for name in _ARCHITECTURES
    }

    def __post_init__(self) -> None:
        if self.backbone not in _ARCHITECTURES:
            raise ConfigError(
                f"ResNetConfig.backbone: unknown backbone {self.backbone!r}; "
                f"expected one of {sorted(_ARCHITECTURES)}"
            )

    @property
    def block(self) -> str:
        """``"basic"`` (ResNet18) or ``"bottleneck"`` (ResNet50)."""
        return _ARCHITECTURES[self.backbone][0]

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        """Residual blocks per stage (``layer1..layer4``)."""
        return _ARCHITECTURES[self.backbone][1]

    @property
    def pooled_dim(self) -> int:
        """Feature size after global average pooling: 512 or 2048."""
        expansion = _BOTTLENECK_EXPANSION if self.block == "bottleneck" else 1
        return _STAGE_WIDTHS[-1] * expansion


def nchw_to_nhwc(x: jax.Array) -> jax.Array:
    """``(B, C, H, W)`` (the reference's torch layout) → ``(B, H, W, C)`` for the encoder."""
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D NCHW image batch (B, C, H, W), got shape {x.shape}")
    return jnp.transpose(x, (0, 2, 3, 1))


def _conv(features: int, kernel: int, stride: int, name: str, **dtypes: Any) -> nn.Conv:
    """Bias-free conv with torchvision's symmetric padding ``kernel // 2`` (not ``"SAME"``);
    ``dtypes``: ``dtype``/``param_dtype``."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        # Explicit symmetric padding: "SAME" pads the high side more for stride 2.
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_conv_init,
        name=name,
        **dtypes,
    )


class _ResidualBlock(nn.Module):
    """Shared fields and the torchvision shortcut of :class:`BasicBlock`/:class:`Bottleneck`."""

    width: int
    stride: int
    train: bool
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @property
    def _dtypes(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}

    def _bn(self, name: str) -> BatchNorm:
        return BatchNorm(use_running_average=not self.train, name=name, **self._dtypes)

    def _conv(self, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
        return _conv(features, kernel, stride, name, **self._dtypes)

    def _add_shortcut(self, out: jax.Array, x: jax.Array) -> jax.Array:
        """ReLU(out + shortcut); the shortcut is a strided 1x1 conv + BN when shapes change."""
        features = out.shape[-1]
        if self.stride != 1 or x.shape[-1] != features:
            x = self._bn("downsample_1")(self._conv(features, 1, self.stride, "downsample_0")(x))
        return nn.relu(out + x)


class BasicBlock(_ResidualBlock):
    """torchvision ``BasicBlock``: 3x3 (stride) → BN → ReLU → 3x3 → BN, + shortcut, ReLU."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = nn.relu(self._bn("bn1")(self._conv(self.width, 3, self.stride, "conv1")(x)))
        out = self._bn("bn2")(self._conv(self.width, 3, 1, "conv2")(out))
        return self._add_shortcut(out, x)


class Bottleneck(_ResidualBlock):
    """torchvision ``Bottleneck`` (v1.5): 1x1 → 3x3 (stride here) → 1x1 (x4), + shortcut, ReLU."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = nn.relu(self._bn("bn1")(self._conv(self.width, 1, 1, "conv1")(x)))
        # torchvision puts the stride on the 3x3 conv (ResNet v1.5), not on the first 1x1.
        out = nn.relu(self._bn("bn2")(self._conv(self.width, 3, self.stride, "conv2")(out)))
        out = self._bn("bn3")(self._conv(self.width * _BOTTLENECK_EXPANSION, 1, 1, "conv3")(out))
        return self._add_shortcut(out, x)


class CMREncoder(nn.Module):
    """ResNet feature extractor: NHWC images ``(B, H, W, C)`` → pooled features ``(B, F)``.

    ``F`` is ``cfg.pooled_dim``. Always returns ``(B, F)``, also for ``B == 1`` (the reference's
    ``.squeeze()`` drops the batch axis there; we do not copy that). ``train=True`` uses batch
    statistics and updates ``batch_stats`` (apply with ``mutable=["batch_stats"]``). Use
    :func:`nchw_to_nhwc` for torch-layout inputs.
    """

    cfg: ResNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.cfg
        if x.ndim != 4:
            raise ValueError(
                f"CMREncoder expects a 4-D NHWC image batch (B, H, W, {cfg.in_channels}), "
                f"got shape {x.shape}"
            )
        if x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"CMREncoder expects {cfg.in_channels} channels last (NHWC), got shape {x.shape}; "
                "convert NCHW input with jaxecg.models.nchw_to_nhwc"
            )
        dtypes = cfg.dtypes
        x = _conv(64, 7, 2, "conv1", **dtypes)(x)
        x = BatchNorm(use_running_average=not train, name="bn1", **dtypes)(x)
        x = nn.relu(x)
        x = max_pool(x, window=3, stride=2, padding=1)  # torch MaxPool2d(3, 2, padding=1)
        block_cls = Bottleneck if cfg.block == "bottleneck" else BasicBlock
        for stage, (num_blocks, width) in enumerate(zip(cfg.stage_sizes, _STAGE_WIDTHS)):
            for j in range(num_blocks):
                stride = 2 if stage > 0 and j == 0 else 1
                x = block_cls(width, stride, train, name=f"layer{stage + 1}_{j}", **dtypes)(x)
        return jnp.mean(x, axis=(1, 2))
