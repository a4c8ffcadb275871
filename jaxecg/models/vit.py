"""ViT building blocks (timm 0.6 semantics) and the ECG encoder.

Parameter names mirror timm's module tree (``patch_embed/proj``, ``blocks_{i}/attn/qkv``,
``blocks_{i}/mlp/fc1``, ``norm``/``fc_norm``, ``attention_pool/{q,k,v,out}_proj``) so a
PyTorch state dict maps onto them by table. ECG input: ``(B, leads, T)`` or
``(B, C=1, leads, T)`` float32; patches ``(1, 100)`` over (leads, time); tokens in
row-major grid order ``lead_row * (T / 100) + time_col``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxecg.config import Config, ConfigError
from jaxecg.models.attention import (
    AttentionBackend,
    AttentionFn,
    attend,
    attention_probs,
    resolve_attention,
    softmax_attention,
)
from jaxecg.models.precision import PrecisionConfig

LN_EPS = 1e-6

ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "pluto": {"embed_dim": 256, "depth": 2, "num_heads": 8},
    "tiny": {"embed_dim": 384, "depth": 3, "num_heads": 6},
    "tinyDeep": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 512, "depth": 4, "num_heads": 8},
    "medium": {"embed_dim": 640, "depth": 6, "num_heads": 8},
    "big": {"embed_dim": 768, "depth": 8, "num_heads": 8},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "huge": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
}


def check_positive(config: Config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if any(v <= 0 for v in values):
            raise ConfigError(f"{type(config).__name__}.{name} must be positive, got {value!r}")


def check_rates(config: Config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{type(config).__name__}.{name} must be in [0, 1), got {value!r}")


@dataclasses.dataclass(frozen=True)
class ViTBackboneConfig(PrecisionConfig):
    """Shape of a ViT over ECGs: ``img_size = (C, leads, T)``, ``patch_size = (p, q)``.

    ``dtype``/``param_dtype``: see :mod:`jaxecg.models.precision`. ``attention``: the
    attention kernel (:func:`~jaxecg.models.attention.resolve_attention`; ``auto`` is
    cuDNN flash attention on a GPU in bf16/fp16, blocked attention on CPU, else the plain
    XLA softmax).
    ``remat``: rematerialise each transformer block in the backward pass (activation
    memory of one block instead of all, for one more forward per block).
    """

    img_size: tuple[int, int, int] = (1, 12, 2500)
    patch_size: tuple[int, int] = (1, 100)
    embed_dim: int = 384
    depth: int = 3
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    attention: AttentionBackend = "auto"
    remat: bool = False

    def __post_init__(self) -> None:
        check_positive(self, "img_size", "patch_size", "embed_dim", "depth", "num_heads")
        check_positive(self, "mlp_ratio")
        _, leads, time = self.img_size
        if leads % self.patch_size[0] or time % self.patch_size[1]:
            raise ConfigError(
                f"{type(self).__name__}: img_size (leads, T) = {(leads, time)} is not divisible "
                f"by patch_size {self.patch_size}"
            )
        check_heads(self, self.embed_dim, self.num_heads, "embed_dim", "num_heads")

    @property
    def in_chans(self) -> int:
        return self.img_size[0]

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid ``(leads / p, T / q)``."""
        return (self.img_size[1] // self.patch_size[0], self.img_size[2] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


def check_heads(config: Config, dim: int, heads: int, dim_name: str, heads_name: str) -> None:
    if dim % heads:
        raise ConfigError(
            f"{type(config).__name__}: {dim_name}={dim} is not divisible by {heads_name}={heads}"
        )


@dataclasses.dataclass(frozen=True)
class ViTConfig(ViTBackboneConfig):
    """ECG encoder config; presets ``pluto`` ... ``huge`` (default: ``tiny``, the published size).

    ``global_pool``: ``"attention_pool"`` (MHA with the mean patch token as query, then
    ``fc_norm``), ``"avg"`` (mean patch token, then ``fc_norm``) or ``"token"`` (the
    reference's falsy value: ``norm`` then the cls token). ``drop_rate`` is timm's dropout
    after the pos-embed, the attention projection and both MLP layers; ``drop_path_rate``
    is stochastic depth, linearly increasing over the blocks.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = ENCODER_PRESETS

    global_pool: Literal["attention_pool", "avg", "token"] = "attention_pool"
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rates(self, "drop_rate", "attn_drop_rate", "drop_path_rate")


def prepare_ecg(
    x: Any, img_size: tuple[int, int, int], patch_size: tuple[int, int]
) -> tuple[jax.Array, bool]:
    """Validate an ECG batch and return it NHWC ``(B, leads, T, C)`` float32.

    Accepts ``(B, leads, T)`` (only when ``C == 1``) or ``(B, C, leads, T)``; the bool
    says whether the input had the channel axis. NaNs raise when ``x`` is concrete (the
    check is skipped under ``jit``/``vmap``/``grad`` tracing).
    """
    chans, leads, time = img_size
    shape = tuple(np.shape(x))
    expected = f"(B, {chans}, {leads}, {time})"
    if chans == 1:
        expected = f"(B, {leads}, {time}) or {expected}"
    if len(shape) == 3 and chans == 1:
        got_leads, got_time = shape[1:]
    elif len(shape) == 4 and shape[1] == chans:
        got_leads, got_time = shape[2:]
    else:
        raise ValueError(f"expected an ECG batch of shape {expected}, got {shape}")
    if got_leads != leads:
        raise ValueError(f"expected {leads} leads, i.e. shape {expected}; got {shape}")
    if got_time % patch_size[1]:
        raise ValueError(
            f"time length {got_time} is not divisible by the patch width {patch_size[1]}; "
            f"expected shape {expected}, got {shape}"
        )
    if got_time != time:
        raise ValueError(f"expected {time} time samples, i.e. shape {expected}; got {shape}")
    if not isinstance(x, jax.core.Tracer) and bool(np.isnan(np.asarray(x)).any()):
        raise ValueError(f"the ECG batch of shape {shape} contains NaN values")
    x = jnp.asarray(x, jnp.float32)
    had_channel = len(shape) == 4
    if not had_channel:
        x = x[:, None]
    return jnp.transpose(x, (0, 2, 3, 1)), had_channel


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = patch over NHWC ``(B, leads, T, C)`` -> ``(B, N, D)``."""

    patch_size: tuple[int, int]
    embed_dim: int
    kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.embed_dim,
            kernel_size=self.patch_size,
            strides=self.patch_size,
            padding="VALID",
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="proj",
        )(x)
        batch, grid_h, grid_w, dim = x.shape
        # Row-major flatten of the (gh, gw) grid = timm's flatten(2).transpose(1, 2).
        return x.reshape(batch, grid_h * grid_w, dim)


def dense_rows(layer: nn.Dense, x: jax.Array) -> jax.Array:
    """``layer`` over ``(..., D)`` as one 2-D ``(rows, D)`` matmul; same parameters and values.

    Why: on ``(B, N, D)`` inputs XLA CPU lowers the kernel gradient with a transpose copy
    of the activations first (~14 % of the MAE step, docs in ``benchmarks/README.md``);
    flattened, the forward and both gradients are plain GEMMs.
    """
    y = layer(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` Linear ``D -> 3D`` ([q|k|v] x head x hd)."""

    num_heads: int
    qkv_bias: bool = True
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    attention_fn: AttentionFn = softmax_attention
    kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, return_attn: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """``(B, N, D) -> (B, N, D)``; with ``return_attn`` also the ``(B, heads, N, N)`` weights.

        The weights need the explicit softmax path, which is also taken when attention
        dropout is active; otherwise ``attention_fn`` runs.
        """
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        dense = functools.partial(
            nn.Dense, kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype
        )
        qkv = dense_rows(dense(3 * dim, use_bias=self.qkv_bias, name="qkv"), x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scale = head_dim**-0.5
        probs = None
        if return_attn or (train and self.attn_drop > 0.0):
            probs = attention_probs(q, k, scale)
            # The reference stores the map after attn_drop (identity in eval).
            probs = nn.Dropout(self.attn_drop, deterministic=not train)(probs)
            out = attend(probs, v)
        else:
            out = self.attention_fn(q, k, v, scale=scale)
        out = dense_rows(dense(dim, name="proj"), out.reshape(batch, tokens, dim))
        out = nn.Dropout(self.proj_drop, deterministic=not train)(out)
        return (out, probs) if return_attn else out


class Mlp(nn.Module):
    """``fc1 -> exact GELU -> dropout -> fc2 -> dropout`` (timm ``Mlp``)."""

    hidden_dim: int
    drop: float = 0.0
    kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        out_dim = x.shape[-1]
        dense = functools.partial(
            nn.Dense, kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype
        )
        x = dense_rows(dense(self.hidden_dim, name="fc1"), x)
        # torch nn.GELU() is the erf form; jax.nn.gelu defaults to the tanh approximation.
        x = jax.nn.gelu(x, approximate=False)
        x = nn.Dropout(self.drop, deterministic=not train)(x)
        x = dense_rows(dense(out_dim, name="fc2"), x)
        return nn.Dropout(self.drop, deterministic=not train)(x)


def layer_norm(
    name: str | None = None, *, dtype: Any = None, param_dtype: Any = jnp.float32
) -> nn.LayerNorm:
    """timm's ``LayerNorm(eps=1e-6)``: two-pass variance, like torch (not E[x^2] - E[x]^2).

    Flax computes the statistics and the normalisation in at least fp32 and only casts
    the result to ``dtype``.
    """
    return nn.LayerNorm(
        epsilon=LN_EPS, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name
    )


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    ``drop`` is timm's ``drop_rate`` (attention projection and MLP dropout),
    ``drop_path`` the stochastic-depth rate of this block. The residual sums stay in
    the stream's dtype (fp32: the fp32 position embedding promotes it) while the
    branches compute in ``dtype``. ``train``/``return_attn`` may be positional, as
    :func:`block_class`'s rematerialised version needs them static.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    attention_fn: AttentionFn = softmax_attention
    kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, return_attn: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        dim = x.shape[-1]
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        # Stochastic depth: one keep/drop per sample, scaled by 1/keep, like timm DropPath.
        drop_path = nn.Dropout(
            self.drop_path, broadcast_dims=tuple(range(1, x.ndim)), deterministic=not train
        )
        attn = Attention(
            self.num_heads,
            qkv_bias=self.qkv_bias,
            attn_drop=self.attn_drop,
            proj_drop=self.drop,
            attention_fn=self.attention_fn,
            kernel_init=self.kernel_init,
            name="attn",
            **dtypes,
        )(layer_norm("norm1", **dtypes)(x), train=train, return_attn=return_attn)
        probs = None
        if return_attn:
            attn, probs = attn
        x = x + drop_path(attn)
        mlp = Mlp(
            int(dim * self.mlp_ratio),
            drop=self.drop,
            kernel_init=self.kernel_init,
            name="mlp",
            **dtypes,
        )
        x = x + drop_path(mlp(layer_norm("norm2", **dtypes)(x), train=train))
        return (x, probs) if return_attn else x


# Block.__call__(self, x, train, return_attn): the two flags are static for jax.checkpoint.
_REMAT_BLOCK = nn.remat(Block, static_argnums=(2, 3))


def block_class(remat: bool) -> type[Block]:
    """:class:`Block`, or with ``remat`` its ``nn.remat`` version (same parameters, outputs
    and gradients; the block's activations are recomputed in the backward pass). Call it
    as ``block(x, train, return_attn)``: the remat version needs both flags, positional."""
    return _REMAT_BLOCK if remat else Block


class AttentionPool(nn.Module):
    """``torch.nn.MultiheadAttention(batch_first=True)`` of a query over ``tokens``.

    Torch's packed ``in_proj_weight`` rows [0:D], [D:2D], [2D:3D] are ``q_proj``,
    ``k_proj``, ``v_proj`` here. ``query (B, Nq, D)``, ``tokens (B, N, D)`` -> ``(B, Nq, D)``.
    """

    num_heads: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query: jax.Array, tokens: jax.Array) -> jax.Array:
        batch, n_query, dim = query.shape
        head_dim = dim // self.num_heads
        dense = functools.partial(nn.Dense, dim, dtype=self.dtype, param_dtype=self.param_dtype)

        def heads(y: jax.Array, name: str) -> jax.Array:
            y = dense_rows(dense(kernel_init=nn.initializers.xavier_uniform(), name=name), y)
            return y.reshape(batch, y.shape[1], self.num_heads, head_dim)

        # torch MHA scales q before q @ k^T (timm scales the product; same up to rounding).
        q = heads(query, "q_proj") * head_dim**-0.5
        probs = attention_probs(q, heads(tokens, "k_proj"), 1.0)
        out = attend(probs, heads(tokens, "v_proj"))
        return dense_rows(dense(name="out_proj"), out.reshape(batch, n_query, dim))


class ECGEncoder(nn.Module):
    """The reference ``ECGEncoder.forward_features``: ``(B, D)``, or ``(B, N, D)`` if localized.

    The pos-embed is learned (``(1, 1 + N, D)``). ``localized=True`` returns the patch
    tokens after the last block with no norm at all. The reference's unused
    ``head`` Linear(D, 2) is not part of this module. ``attention_fn`` overrides the
    config's ``attention`` backend.
    """

    config: ViTConfig
    attention_fn: AttentionFn | None = None

    def setup(self) -> None:
        cfg = self.config
        dtypes = cfg.dtypes
        attention_fn = self.attention_fn or resolve_attention(cfg.attention, cfg.dtype)
        kernel_init = nn.initializers.truncated_normal(0.02)  # timm ViT init of Linear weights
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim, **dtypes)
        self.cls_token = self.param(
            "cls_token", nn.initializers.normal(0.02), (1, 1, cfg.embed_dim), cfg.param_dtype
        )
        self.pos_embed = self.param(
            "pos_embed",
            nn.initializers.truncated_normal(0.02),
            (1, 1 + cfg.num_patches, cfg.embed_dim),
            cfg.param_dtype,
        )
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = np.linspace(0.0, cfg.drop_path_rate, cfg.depth)  # timm's per-block drop-path
        block = block_class(cfg.remat)
        self.blocks = [
            block(
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                drop=cfg.drop_rate,
                attn_drop=cfg.attn_drop_rate,
                drop_path=float(rate),
                attention_fn=attention_fn,
                kernel_init=kernel_init,
                **dtypes,
            )
            for rate in rates
        ]
        if cfg.global_pool == "attention_pool":
            self.attention_pool = AttentionPool(cfg.num_heads, **dtypes)
        if cfg.global_pool == "token":
            self.norm = layer_norm(**dtypes)
        else:
            self.fc_norm = layer_norm(**dtypes)

    def embed_patches(self, x: Any) -> jax.Array:
        """Validated ECG -> patch tokens plus their pos-embed ``(B, N, D)`` (no cls yet)."""
        x, _ = prepare_ecg(x, self.config.img_size, self.config.patch_size)
        return self.patch_embed(x) + self.pos_embed[:, 1:]

    def encode_tokens(
        self, tokens: jax.Array, *, train: bool, return_attn: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Prepend ``cls + pos_embed[0]``, dropout, blocks -> ``(B, 1 + N', D)``.

        With ``return_attn`` also the last block's attention weights.
        """
        cls = jnp.broadcast_to(
            self.cls_token + self.pos_embed[:, :1], (tokens.shape[0], 1, tokens.shape[-1])
        )
        x = self.pos_drop(jnp.concatenate([cls, tokens], axis=1), deterministic=not train)
        for block in self.blocks[:-1]:
            x = block(x, train, False)
        return self.blocks[-1](x, train, return_attn)

    def pool(self, x: jax.Array) -> jax.Array:
        """``(B, 1 + N', D) -> (B, D)`` by ``global_pool`` (the cls token is never pooled)."""
        patches = x[:, 1:]
        if self.config.global_pool == "attention_pool":
            query = jnp.mean(patches, axis=1, keepdims=True)
            return self.fc_norm(self.attention_pool(query, patches)[:, 0])
        if self.config.global_pool == "avg":
            return self.fc_norm(jnp.mean(patches, axis=1))
        return self.norm(x)[:, 0]

    def __call__(self, x: Any, *, localized: bool = False, train: bool = False) -> jax.Array:
        """``x (B, leads, T)`` or ``(B, 1, leads, T)`` -> ``(B, D)``; localized ``(B, N, D)``."""
        x = self.encode_tokens(self.embed_patches(x), train=train)
        if not localized:
            return self.pool(x)
        if self.is_initializing():
            self.pool(x)  # create the pooling params: the tree must not depend on `localized`
        return x[:, 1:]
