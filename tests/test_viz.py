"""Attention maps and MAE reconstructions against the golden cases, and the PNGs made of them.

Expected attention grids are built here from the golden ``attn_map`` (heads averaged,
cls row, cls key dropped) placed at the golden kept-token positions (``ids_shuffle``
or ``ids_keep_c``/``ids_keep_t``).
"""

from __future__ import annotations

import functools

import golden
import jax
import numpy as np
import pytest
import vit_golden
from matplotlib.image import imread

from jaxecg.encoders import LoadedModel, as_encoder, load_model
from jaxecg.models.masking import num_kept
from jaxecg.viz import (
    DPI,
    attention_maps,
    export_attention,
    export_reconstruction,
    plot_attention,
    reconstructions,
)

CLASSIFIER_CASE = "dev/ecg_classifier/attention_pool"
MASKED_CASE = "dev/ecg_classifier/attention_pool_masked"
BLOCKWISE_CASE = "dev/ecg_classifier/blockwise"
MAE_CASE = "dev/mae/forward"


@functools.cache
def _classifier(case_id: str) -> LoadedModel:
    cfg = vit_golden.classifier_config(case_id)
    path = golden.checkpoint_path(golden.case(case_id)["weights"]["checkpoint"])
    return load_model(path, kind="ecg_classifier", **cfg.to_dict())


@functools.cache
def _mae() -> LoadedModel:
    cfg = vit_golden.mae_config(MAE_CASE)
    path = golden.checkpoint_path(golden.case(MAE_CASE)["weights"]["checkpoint"])
    return load_model(path, kind="mae", **cfg.to_dict())


def _expected_grid(case_id: str) -> np.ndarray:
    arrays = golden.arrays(case_id)
    weights = arrays["attn_map"].astype(np.float64).mean(axis=1)[:, 0, 1:]
    batch, kept = weights.shape
    grid_h, grid_w = vit_golden.classifier_config(case_id).grid_size
    if "ids_keep_c" in arrays:
        rows, cols = arrays["ids_keep_c"], arrays["ids_keep_t"]
        positions = (rows[:, :, None] * grid_w + cols[:, None, :]).reshape(batch, -1)
    else:
        positions = arrays["ids_shuffle"][:, :kept]
    grid = np.full((batch, grid_h * grid_w), np.nan)
    np.put_along_axis(grid, positions, weights, axis=1)
    return grid.reshape(batch, grid_h, grid_w)


def _noise(case_id: str):
    arrays = golden.arrays(case_id)
    return (arrays["noise_c"], arrays["noise_t"]) if "noise_c" in arrays else arrays["noise"]


@pytest.mark.parametrize("case_id", [CLASSIFIER_CASE, MASKED_CASE, BLOCKWISE_CASE])
def test_attention_grid_matches_golden_attention(case_id: str) -> None:
    grid = np.asarray(
        attention_maps(_classifier(case_id), golden.arrays(case_id)["x"], noise=_noise(case_id))
    )
    expected = _expected_grid(case_id)
    np.testing.assert_array_equal(np.isnan(grid), np.isnan(expected))
    np.testing.assert_allclose(
        grid, expected, rtol=0, atol=golden.case(case_id)["arrays"]["attn_map"]["atol"]
    )


def test_shuffled_order_only_arises_with_noise() -> None:
    """At mask ratio 0 noise only permutes the tokens: mapped back, the grid is the same."""
    model = _classifier(CLASSIFIER_CASE)
    x = golden.arrays(CLASSIFIER_CASE)["x"]
    plain = np.asarray(attention_maps(model, x))
    np.testing.assert_allclose(plain, _expected_grid(CLASSIFIER_CASE), rtol=0, atol=1e-5)
    # The classifier cut to its encoder has the same last-block attention.
    np.testing.assert_allclose(attention_maps(as_encoder(model), x), plain, rtol=0, atol=1e-6)
    mean_rows = np.asarray(attention_maps(model, x, query="mean"))
    assert mean_rows.shape == plain.shape and not np.allclose(mean_rows, plain)


def test_reconstruction_matches_golden_mae() -> None:
    arrays = golden.arrays(MAE_CASE)
    out = reconstructions(_mae(), arrays["x"], noise=arrays["noise"])
    golden.assert_matches(MAE_CASE, "imgs_hat", out.reconstruction)
    golden.assert_matches(MAE_CASE, "mask", out.mask)


def _assert_nontrivial_png(path, size: tuple[int, int]) -> None:
    assert path.is_file() and path.suffix == ".png"
    image = imread(path)
    assert image.shape[:2] == size
    # Not a blank canvas: many distinct colours and a clear spread of pixel values.
    assert float(image[..., :3].std()) > 0.05
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 50


def test_export_attention_writes_npz_and_png(tmp_path) -> None:
    model = _classifier(MASKED_CASE)
    x = golden.arrays(MASKED_CASE)["x"][:, 0]
    paths = export_attention(model, x, ["rec/0", "rec 1"], tmp_path, noise=_noise(MASKED_CASE))
    assert [p.name for p in paths] == ["rec_0_attention.png", "rec_1_attention.png"]
    for i, path in enumerate(paths):
        _assert_nontrivial_png(path, (int((0.45 * 12 + 1.2) * DPI), 12 * DPI))
        with np.load(path.with_suffix(".npz")) as saved:
            np.testing.assert_array_equal(saved["ecg"], x[i])
            np.testing.assert_allclose(
                saved["attention"], _expected_grid(MASKED_CASE)[i], atol=1e-5
            )


def test_export_reconstruction_writes_npz_and_png(tmp_path) -> None:
    model = _mae()
    x = golden.arrays(MAE_CASE)["x"][:, 0]
    paths = export_reconstruction(model, x, ["a", "b"], tmp_path, seed=3)
    expected = reconstructions(model, x, seed=3)
    for i, path in enumerate(paths):
        _assert_nontrivial_png(path, (12 * DPI, 12 * DPI))
        with np.load(path.with_suffix(".npz")) as saved:
            np.testing.assert_array_equal(
                saved["reconstruction"], np.asarray(expected.reconstruction)[i]
            )
            np.testing.assert_array_equal(saved["mask"], np.asarray(expected.mask)[i])
            cfg = model.config
            assert saved["mask"].sum() == cfg.num_patches - num_kept(
                cfg.num_patches, cfg.mask_ratio
            )


def test_attention_plot_leaves_masked_cells_blank(tmp_path) -> None:
    grid = np.tile(np.linspace(0.0, 1.0, 5), (12, 1))
    grid[3] = np.nan
    path = plot_attention(grid, tmp_path / "a.png", title="test")
    _assert_nontrivial_png(path, (int((0.45 * 12 + 1.2) * DPI), 12 * DPI))


def test_bad_models_raise() -> None:
    x = golden.arrays(MAE_CASE)["x"]
    with pytest.raises(ValueError, match="need an ecg_classifier model or an Encoder"):
        attention_maps(_mae(), x)
    with pytest.raises(ValueError, match="need an mae model"):
        reconstructions(_classifier(CLASSIFIER_CASE), x)
    with pytest.raises(ValueError, match="no noise"):
        attention_maps(as_encoder(_classifier(CLASSIFIER_CASE)), x, noise=jax.numpy.zeros((2, 60)))
