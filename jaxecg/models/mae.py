"""Masked autoencoder (MAE) pretraining model over ECG patches, as the reference.

Encoder and decoder use FIXED 2-D sin-cos position embeddings recomputed from the
config (not parameters). Parameter tree: the ViT names (``patch_embed``, ``cls_token``,
``blocks_{i}``, ``norm``) plus ``decoder_embed``, ``mask_token``, ``decoder_blocks_{i}``,
``decoder_norm``, ``decoder_pred``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxecg.config import ConfigError
from jaxecg.losses.reconstruction import mae_loss, zero_normalize
from jaxecg.models.attention import AttentionFn, resolve_attention
from jaxecg.models.masking import masking_noise, random_masking
from jaxecg.models.pos_embed import sincos_pos_embed_f32
from jaxecg.models.vit import (
    ENCODER_PRESETS,
    Block,
    PatchEmbed,
    ViTBackboneConfig,
    block_class,
    check_heads,
    check_positive,
    dense_rows,
    layer_norm,
    prepare_ecg,
)

# decoder_embed_dim / decoder_depth / decoder_num_heads per encoder size. The reference's
# pluto decoder is 256 dims with 6 heads, which cannot run (256 % 6 != 0); its function
# name (`..._dec192d2b`) says 192 dims, which is used here.
DECODER_PRESETS: dict[str, dict[str, int]] = {
    "pluto": {"decoder_embed_dim": 192, "decoder_depth": 2, "decoder_num_heads": 6},
    "tiny": {"decoder_embed_dim": 256, "decoder_depth": 2, "decoder_num_heads": 8},
    "tinyDeep": {"decoder_embed_dim": 256, "decoder_depth": 2, "decoder_num_heads": 8},
    "small": {"decoder_embed_dim": 256, "decoder_depth": 2, "decoder_num_heads": 8},
    "medium": {"decoder_embed_dim": 256, "decoder_depth": 2, "decoder_num_heads": 8},
    "big": {"decoder_embed_dim": 256, "decoder_depth": 4, "decoder_num_heads": 8},
    "base": {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16},
    "large": {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16},
    "huge": {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16},
}


@dataclasses.dataclass(frozen=True)
class MAEConfig(ViTBackboneConfig):
    """MAE config; presets ``pluto`` ... ``huge`` (encoder sizes as :class:`ViTConfig`).

    ``lit_mae_norm`` reproduces the reference's Lightning wrapper (LitMAE), whose
    ``norm()`` method shadows the encoder's final LayerNorm: the latent becomes
    ``(x - mean) / sqrt(var_unbiased + 1e-12)`` over D with no affine (the ``norm``
    parameters still exist, unused, as in its checkpoints).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        name: {**ENCODER_PRESETS[name], **DECODER_PRESETS[name]} for name in ENCODER_PRESETS
    }

    decoder_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    mask_ratio: float = 0.8
    ncc_weight: float = 0.1
    norm_pix_loss: bool = False
    lit_mae_norm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
        check_heads(
            self,
            self.decoder_embed_dim,
            self.decoder_num_heads,
            "decoder_embed_dim",
            "decoder_num_heads",
        )
        for name in ("embed_dim", "decoder_embed_dim"):
            if getattr(self, name) % 4:
                raise ConfigError(f"MAEConfig.{name} must be divisible by 4 for 2-D sin-cos")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"MAEConfig.mask_ratio must be in [0, 1), got {self.mask_ratio}")


class MAEOutput(NamedTuple):
    """What :class:`MAE` returns.

    ``loss`` scalar; ``reconstruction`` = ``unpatchify(pred)`` and ``masked_reconstruction``
    = ``unpatchify(pred * (1 - mask))`` (prediction kept on the VISIBLE patches, as the
    reference), both in the input's layout; ``mask (B, N)`` 1 = removed; ``ids_restore
    (B, N)``; ``latent (B, 1 + len_keep, D)`` encoder output in shuffled order;
    ``pred (B, N, p*q*C)``.
    """

    loss: jax.Array
    reconstruction: jax.Array
    masked_reconstruction: jax.Array
    mask: jax.Array
    ids_restore: jax.Array
    latent: jax.Array
    pred: jax.Array


def patchify(imgs: jax.Array, patch_size: tuple[int, int]) -> jax.Array:
    """``(B, C, H, W) -> (B, h*w, p*q*C)``, patch values ordered (p, q, C)."""
    batch, chans, height, width = imgs.shape
    p, q = patch_size
    h, w = height // p, width // q
    x = imgs.reshape(batch, chans, h, p, w, q)
    x = jnp.einsum("nchpwq->nhwpqc", x)
    return x.reshape(batch, h * w, p * q * chans)


def unpatchify(x: jax.Array, patch_size: tuple[int, int], grid_size: tuple[int, int]) -> jax.Array:
    """Inverse of :func:`patchify`: ``(B, h*w, p*q*C) -> (B, C, h*p, w*q)``."""
    p, q = patch_size
    h, w = grid_size
    batch, length, values = x.shape
    if length != h * w:
        raise ValueError(f"expected {h * w} patches for grid {grid_size}, got {length}")
    chans = values // (p * q)
    x = x.reshape(batch, h, w, p, q, chans)
    x = jnp.einsum("nhwpqc->nchpwq", x)
    return x.reshape(batch, chans, h * p, w * q)


class MAE(nn.Module):
    """``MaskedAutoencoderViT.forward``: ``(x, *, noise=None, train=False) -> MAEOutput``.

    ``x (B, leads, T)`` or ``(B, 1, leads, T)``; ``noise (B, N)`` uniform drives the
    per-sample masking (``ids_shuffle = argsort(noise)``); without it, noise is drawn
    from the ``"masking"`` rng. ``mask_ratio`` defaults to the config's.
    ``attention_fn`` overrides the config's ``attention`` backend. The prediction and
    the loss are fp32 whatever the compute dtype.
    """

    config: MAEConfig
    attention_fn: AttentionFn | None = None

    def setup(self) -> None:
        cfg = self.config
        dtypes = cfg.dtypes
        attention_fn = self.attention_fn or resolve_attention(cfg.attention, cfg.dtype)
        block = block_class(cfg.remat)

        def blocks(num_heads: int, depth: int, qkv_bias: bool) -> list[Block]:
            return [
                block(num_heads, cfg.mlp_ratio, qkv_bias, attention_fn=attention_fn, **dtypes)
                for _ in range(depth)
            ]

        # The reference's MAE init: xavier-uniform Linear weights, N(0, 0.02) tokens.
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim, **dtypes)
        self.cls_token = self.param(
            "cls_token", nn.initializers.normal(0.02), (1, 1, cfg.embed_dim), cfg.param_dtype
        )
        self.blocks = blocks(cfg.num_heads, cfg.depth, cfg.qkv_bias)
        self.norm = layer_norm(**dtypes)
        self.decoder_embed = nn.Dense(
            cfg.decoder_embed_dim, kernel_init=nn.initializers.xavier_uniform(), **dtypes
        )
        self.mask_token = self.param(
            "mask_token",
            nn.initializers.normal(0.02),
            (1, 1, cfg.decoder_embed_dim),
            cfg.param_dtype,
        )
        # The reference's decoder blocks always have a qkv bias.
        self.decoder_blocks = blocks(cfg.decoder_num_heads, cfg.decoder_depth, True)
        self.decoder_norm = layer_norm(**dtypes)
        self.decoder_pred = nn.Dense(
            cfg.patch_size[0] * cfg.patch_size[1] * cfg.in_chans,
            kernel_init=nn.initializers.xavier_uniform(),
            **dtypes,
        )

    def forward_encoder(
        self, imgs_nhwc: jax.Array, noise: jax.Array, mask_ratio: float, train: bool
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(B, leads, T, C)`` -> ``latent (B, 1 + len_keep, D)``, ``mask``, ``ids_restore``."""
        cfg = self.config
        pos_embed = sincos_pos_embed_f32(cfg.embed_dim, cfg.grid_size)
        x = self.patch_embed(imgs_nhwc) + pos_embed[:, 1:]
        masked = random_masking(x, noise, mask_ratio)
        x = masked.x_masked
        cls = jnp.broadcast_to(self.cls_token + pos_embed[:, :1], (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        for block in self.blocks:
            x = block(x, train, False)
        normed = self.norm(x)  # always evaluated so `norm` params exist in both modes
        latent = zero_normalize(x) if cfg.lit_mae_norm else normed
        return latent, masked.mask, masked.ids_restore

    def forward_decoder(self, latent: jax.Array, ids_restore: jax.Array, train: bool) -> jax.Array:
        """Latent + mask tokens, unshuffled -> ``pred (B, N, p*q*C)`` (cls dropped)."""
        cfg = self.config
        x = dense_rows(self.decoder_embed, latent)
        batch, kept_plus_cls, dim = x.shape
        num_mask = ids_restore.shape[1] + 1 - kept_plus_cls
        mask_tokens = jnp.broadcast_to(self.mask_token, (batch, num_mask, dim))
        shuffled = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)
        unshuffled = jnp.take_along_axis(shuffled, ids_restore[:, :, None], axis=1)
        x = jnp.concatenate([x[:, :1], unshuffled], axis=1)
        x = x + sincos_pos_embed_f32(cfg.decoder_embed_dim, cfg.grid_size)
        for block in self.decoder_blocks:
            x = block(x, train, False)
        # The loss compares the prediction with the fp32 input: it leaves the model in fp32.
        return dense_rows(self.decoder_pred, self.decoder_norm(x))[:, 1:].astype(jnp.float32)

    def __call__(
        self,
        x: Any,
        *,
        noise: jax.Array | None = None,
        mask_ratio: float | None = None,
        train: bool = False,
    ) -> MAEOutput:
        cfg = self.config
        imgs_nhwc, had_channel = prepare_ecg(x, cfg.img_size, cfg.patch_size)
        if noise is None:
            noise = masking_noise(self.make_rng("masking"), (imgs_nhwc.shape[0], cfg.num_patches))
        ratio = cfg.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs_nhwc, noise, ratio, train)
        pred = self.forward_decoder(latent, ids_restore, train)

        imgs = jnp.transpose(imgs_nhwc, (0, 3, 1, 2))
        imgs_hat = unpatchify(pred, cfg.patch_size, cfg.grid_size)
        terms = mae_loss(
            pred,
            patchify(imgs, cfg.patch_size),
            imgs,
            imgs_hat,
            ncc_weight=cfg.ncc_weight,
            norm_pix_loss=cfg.norm_pix_loss,
        )
        imgs_hat_masked = unpatchify(pred * (1.0 - mask)[:, :, None], cfg.patch_size, cfg.grid_size)
        if not had_channel:
            imgs_hat, imgs_hat_masked = imgs_hat[:, 0], imgs_hat_masked[:, 0]
        return MAEOutput(
            loss=terms.loss,
            reconstruction=imgs_hat,
            masked_reconstruction=imgs_hat_masked,
            mask=mask,
            ids_restore=ids_restore,
            latent=latent,
            pred=pred,
        )
