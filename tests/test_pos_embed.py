"""Fixed 2-D sin-cos tables and bicubic resizing of learned pos-embeds vs the reference.

Golden: ``get_2d_sincos_pos_embed`` / ``get_1d_sincos_pos_embed_from_grid`` (float64)
and ``interpolate_pos_embed`` (torch bicubic, A = -0.75, align_corners=False).
"""

from __future__ import annotations

import golden
import numpy as np
import pytest
import torch

from jaxecg.models import get_2d_sincos_pos_embed, interpolate_pos_embed
from jaxecg.models.pos_embed import get_1d_sincos_pos_embed_from_grid, sincos_pos_embed_f32

SINCOS = "dev/pos_embed/sincos_2d"
INTERP = "dev/pos_embed/interpolate"


@pytest.mark.parametrize(
    ("name", "dim", "grid"),
    [
        ("sincos_d64_12x25", 64, (12, 25)),
        ("sincos_d64_12x5", 64, (12, 5)),
        ("sincos_d32_12x25", 32, (12, 25)),
        ("sincos_d32_12x5", 32, (12, 5)),
    ],
)
def test_2d_sincos_matches_reference(name: str, dim: int, grid: tuple[int, int]) -> None:
    table = get_2d_sincos_pos_embed(dim, grid, cls_token=True)
    assert table.dtype == np.float64
    golden.assert_matches(SINCOS, name, table)
    # The models' float32 table is the float64 one cast once, with a batch axis.
    np.testing.assert_array_equal(sincos_pos_embed_f32(dim, grid)[0], table.astype(np.float32))


def test_1d_sincos_matches_reference() -> None:
    golden.assert_matches(
        SINCOS, "sincos_1d_d32_n10", get_1d_sincos_pos_embed_from_grid(32, np.arange(10))
    )


def test_first_half_encodes_time_column() -> None:
    table = get_2d_sincos_pos_embed(32, (12, 5))
    # Tokens of the same time column share the first half, those of one lead row the second.
    np.testing.assert_array_equal(table[0, :16], table[5, :16])
    np.testing.assert_array_equal(table[0, 16:], table[4, 16:])
    assert not np.allclose(table[0, :16], table[1, :16])


def test_interpolate_matches_reference() -> None:
    case = golden.case(INTERP)
    assert case["model_grid"] == [12, 8]
    src = golden.arrays(INTERP)["checkpoint_pos_embed"]
    golden.assert_matches(INTERP, "new_pos_embed", interpolate_pos_embed(src, (12, 8)))


@pytest.mark.parametrize("new_width", [3, 7, 11])
def test_interpolate_matches_torch_bicubic(new_width: int) -> None:
    src = np.random.default_rng(0).normal(size=(1, 1 + 4 * 5, 6)).astype(np.float32)
    grid = torch.tensor(src[:, 1:]).reshape(1, 4, 5, 6).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(
        grid, size=(4, new_width), mode="bicubic", align_corners=False
    )
    expected = np.concatenate(
        [src[:, :1], resized.permute(0, 2, 3, 1).reshape(1, -1, 6).numpy()], 1
    )
    np.testing.assert_allclose(
        np.asarray(interpolate_pos_embed(src, (4, new_width))), expected, atol=2e-6
    )


def test_interpolate_same_width_is_identity() -> None:
    src = golden.arrays(INTERP)["checkpoint_pos_embed"]
    np.testing.assert_array_equal(np.asarray(interpolate_pos_embed(src, (12, 5))), src)


def test_interpolate_rejects_incompatible_rows() -> None:
    src = golden.arrays(INTERP)["checkpoint_pos_embed"]
    with pytest.raises(ValueError, match="not a multiple of the 7 lead rows"):
        interpolate_pos_embed(src, (7, 8))
    with pytest.raises(ValueError, match=r"expected pos_embed of shape \(1, 1 \+ N, D\)"):
        interpolate_pos_embed(src[0], (12, 8))


def test_sincos_rejects_bad_dims() -> None:
    with pytest.raises(ValueError, match="embed_dim % 4 == 0"):
        get_2d_sincos_pos_embed(30, (12, 5))
