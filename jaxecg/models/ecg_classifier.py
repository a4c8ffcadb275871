"""The fine-tuning ECG classifier: ViT encoder + token masking + linear head.

Parameter tree as :class:`~jaxecg.models.vit.ECGEncoder` plus ``head/{kernel,bias}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from jaxecg.config import ConfigError
from jaxecg.models.masking import blockwise_masking, masking_noise, random_masking
from jaxecg.models.vit import ECGEncoder, ViTConfig, check_rates

Noise = jax.Array | tuple[jax.Array, jax.Array]


@dataclasses.dataclass(frozen=True)
class ECGClassifierConfig(ViTConfig):
    """ECG classifier config (presets as :class:`ViTConfig`).

    ``drop_rate`` defaults to 0.1 because the reference passes its ``drop_path_rate``
    (0.1) as timm's ``drop_rate`` (plain dropout, no stochastic depth); ``drop_path_rate``
    here is real stochastic depth, off by default.
    Masking (training, or whenever ``noise`` is passed): ``random`` keeps
    ``int(N * (1 - mask_ratio))`` tokens; ``masking_blockwise`` keeps
    ``int(rows * (1 - mask_c_ratio))`` lead rows and ``int(cols * (1 - mask_t_ratio))``
    time columns. ``double_fc_norm``: the reference's ``forward_head`` applies
    ``fc_norm`` a second time to the pooled features; its fine-tuned weights were
    trained that way, so it is on by default (no effect with ``global_pool="token"``).
    """

    num_classes: int = 2
    drop_rate: float = 0.1
    mask_ratio: float = 0.0
    masking_blockwise: bool = False
    mask_c_ratio: float = 0.0
    mask_t_ratio: float = 0.0
    double_fc_norm: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes <= 0:
            raise ConfigError(
                f"ECGClassifierConfig.num_classes must be positive, got {self.num_classes}"
            )
        check_rates(self, "mask_ratio", "mask_c_ratio", "mask_t_ratio")

    @property
    def masks_tokens(self) -> bool:
        """Whether a drawn mask would drop any token (ratio 0 only permutes them)."""
        if self.masking_blockwise:
            return self.mask_c_ratio > 0.0 or self.mask_t_ratio > 0.0
        return self.mask_ratio > 0.0


class ECGClassifier(ECGEncoder):
    """``logits (B, num_classes) = forward_head(forward_features(x))``.

    Tokens are masked (after the pos-embed, before the cls token) when ``train=True``
    — noise drawn from the ``"masking"`` rng — or whenever ``noise`` is given:
    ``(B, N)`` for random masking, a pair ``((B, rows), (B, cols))`` for blockwise.
    The reference also masks in eval mode; this port does not unless ``noise`` is
    passed. The last block's attention weights ``(B, heads, 1 + N', 1 + N')`` (tokens
    in masked/shuffled order) are sown as intermediate ``"attn_map"``.
    """

    config: ECGClassifierConfig

    def setup(self) -> None:
        super().setup()
        # The reference re-initialises head.weight with trunc_normal(std=0.01).
        self.head = nn.Dense(
            self.config.num_classes,
            kernel_init=nn.initializers.truncated_normal(0.01),
            **self.config.dtypes,
        )

    def mask_tokens(self, tokens: jax.Array, noise: Noise | None, train: bool) -> jax.Array:
        """Apply the configured masking to ``(B, N, D)`` tokens (see the class docstring)."""
        cfg = self.config
        if noise is None:
            if not (train and cfg.masks_tokens):
                return tokens
            key = self.make_rng("masking")
            if cfg.masking_blockwise:
                key_c, key_t = jax.random.split(key)
                noise = (
                    masking_noise(key_c, (tokens.shape[0], cfg.grid_size[0])),
                    masking_noise(key_t, (tokens.shape[0], cfg.grid_size[1])),
                )
            else:
                noise = masking_noise(key, tokens.shape[:2])
        if cfg.masking_blockwise:
            if not (isinstance(noise, (tuple, list)) and len(noise) == 2):
                raise ValueError(
                    "blockwise masking needs noise as a pair (noise_c (B, rows), "
                    f"noise_t (B, cols)), got {type(noise).__name__}"
                )
            return blockwise_masking(
                tokens, cfg.grid_size, noise[0], noise[1], cfg.mask_c_ratio, cfg.mask_t_ratio
            ).x_masked
        return random_masking(tokens, noise, cfg.mask_ratio).x_masked

    def forward_features(
        self, x: Any, *, noise: Noise | None = None, train: bool = False
    ) -> jax.Array:
        """The reference's ``forward_features``: pooled features ``(B, D)``."""
        tokens = self.mask_tokens(self.embed_patches(x), noise, train)
        x, attn_map = self.encode_tokens(tokens, train=train, return_attn=True)
        self.sow("intermediates", "attn_map", attn_map)
        return self.pool(x)

    def forward_head(self, features: jax.Array, *, pre_logits: bool = False) -> jax.Array:
        """``(B, D)`` features -> logits; ``pre_logits`` stops before ``head``."""
        if self.config.global_pool != "token" and self.config.double_fc_norm:
            features = self.fc_norm(features)
        return features if pre_logits else self.head(features)

    def __call__(self, x: Any, *, noise: Noise | None = None, train: bool = False) -> jax.Array:
        """``x (B, leads, T)`` or ``(B, 1, leads, T)`` -> logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x, noise=noise, train=train))
