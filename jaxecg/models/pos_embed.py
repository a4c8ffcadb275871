"""Position embeddings: the MAE's fixed 2-D sin-cos tables and resizing of learned ones.

Token order everywhere is timm's row-major grid order ``lead_row * grid_w + time_col``
(grid ``(gh, gw) = (leads / p, T / q)``), with the cls token first.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """``(M, embed_dim)`` float64 table ``[sin(pos*w), cos(pos*w)]``, ``w_k = 10000**(-k/(D/2))``.

    ``pos`` holds ``M`` positions (any shape, flattened in C order).
    """
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even embed_dim, got {embed_dim}")
    # float64 throughout, as the reference (np.float) before its final .float() cast.
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", np.asarray(pos, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_size: tuple[int, int], cls_token: bool = False
) -> np.ndarray:
    """``(gh*gw [+1], embed_dim)`` float64 table for a ``(gh, gw)`` token grid.

    Channels ``[0, D/2)`` encode the grid COLUMN (time) index and ``[D/2, D)`` the ROW
    (lead) index: the reference builds the grid with ``meshgrid(w, h)`` and then labels
    the halves the other way round; the golden tables pin this order. With ``cls_token``
    a zero row is prepended.
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs embed_dim % 4 == 0, got {embed_dim}")
    grid_h, grid_w = grid_size
    # meshgrid(w, h): element 0 varies along the columns -> the first channel half.
    cols, rows = np.meshgrid(
        np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64)
    )
    emb = np.concatenate(
        [
            get_1d_sincos_pos_embed_from_grid(embed_dim // 2, cols),
            get_1d_sincos_pos_embed_from_grid(embed_dim // 2, rows),
        ],
        axis=1,
    )
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


@functools.lru_cache(maxsize=32)
def sincos_pos_embed_f32(embed_dim: int, grid_size: tuple[int, int]) -> np.ndarray:
    """The MAE's fixed ``(1, 1 + gh*gw, D)`` float32 table (cls row zero), cached per shape."""
    table = get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=True)
    # Computed in float64 and cast once, as the reference's torch.from_numpy(..).float().
    out = table.astype(np.float32)[None]
    out.flags.writeable = False
    return out


def interpolate_pos_embed(pos_embed: jax.Array, grid_size: tuple[int, int]) -> jax.Array:
    """Resize a learned ``(1, 1 + gh*w_old, D)`` pos_embed to the grid ``(gh, gw)``.

    As the reference's ``interpolate_pos_embed``: the cls row is copied, the lead rows
    ``gh`` are kept and only the time axis is resized, with torch's
    ``interpolate(mode="bicubic", align_corners=False)`` (cubic A = -0.75, edge-clamped,
    no antialiasing). Returns the input unchanged when the width already matches.
    """
    pos_embed = jnp.asarray(pos_embed)
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"expected pos_embed of shape (1, 1 + N, D), got {pos_embed.shape}")
    grid_h, grid_w = grid_size
    n_old = pos_embed.shape[1] - 1
    if n_old % grid_h:
        raise ValueError(
            f"pos_embed has {n_old} patch tokens, not a multiple of the {grid_h} lead rows "
            f"of grid {tuple(grid_size)}"
        )
    old_w = n_old // grid_h
    if old_w == grid_w:
        return pos_embed
    dim = pos_embed.shape[-1]
    tokens = pos_embed[0, 1:].reshape(grid_h, old_w, dim)
    # jax's "cubic-pytorch" without antialiasing is torch's bicubic (A=-0.75, clamped edges).
    resized = jax.image.resize(
        tokens, (grid_h, grid_w, dim), method="cubic-pytorch", antialias=False
    )
    return jnp.concatenate([pos_embed[:, :1], resized.reshape(1, grid_h * grid_w, dim)], axis=1)
