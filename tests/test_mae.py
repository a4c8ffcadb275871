"""MAE (and the LitMAE variant) against the reference's MaskedAutoencoderViT.forward.

Golden cases: mask ratio 0.8 with and without norm-pix loss, ratio 0, and LitMAE's
parameter-free final normalisation, each with the golden masking noise; every expected
array (loss and its terms, reconstructions, mask, ids, latent, pred, norm-pix target,
NCC metric) is compared. Weights come from ``convert.load``.
"""

from __future__ import annotations

import functools

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import vit_golden

from jaxecg.config import ConfigError
from jaxecg.losses import mae_loss, ncc, norm_pix_target
from jaxecg.models import MAE, MAEConfig, patchify, random_masking, unpatchify
from jaxecg.models.masking import num_kept

MAE_CASES = [*golden.case_ids("dev/mae/"), *golden.case_ids("dev/lit_mae/")]
CASE = "dev/mae/forward"


@functools.cache
def _setup(case_id: str) -> tuple[MAE, dict, dict]:
    cfg = vit_golden.mae_config(case_id)
    return MAE(cfg), vit_golden.variables(case_id, "mae", cfg), golden.arrays(case_id)


def test_all_mae_cases_covered() -> None:
    assert MAE_CASES == [
        "dev/mae/forward",
        "dev/mae/forward_norm_pix_loss",
        "dev/mae/forward_mask_ratio_0",
        "dev/lit_mae/forward",
    ]


@pytest.mark.parametrize("case_id", MAE_CASES)
def test_forward_matches_reference(case_id: str) -> None:
    model, variables, a = _setup(case_id)
    out = model.apply(variables, a["x"], noise=a["noise"])
    outputs = {
        "loss": out.loss,
        "imgs_hat": out.reconstruction,
        "imgs_hat_masked": out.masked_reconstruction,
        "latent": out.latent,
        "mask": out.mask,
        "ids_restore": out.ids_restore,
        "pred": out.pred,
    }
    expected = set(golden.expected_names(case_id))
    for name in expected & set(outputs):
        golden.assert_matches(case_id, name, outputs[name])
    ids_shuffle = random_masking(
        jnp.zeros((*a["noise"].shape, 1)), a["noise"], model.config.mask_ratio
    ).ids_shuffle
    golden.assert_matches(case_id, "ids_shuffle", ids_shuffle)

    # The loss terms, from the reference's own pieces: target patches and unpatchify(pred).
    target = patchify(jnp.asarray(a["x"]), model.config.patch_size)
    terms = mae_loss(
        out.pred,
        target,
        a["x"],
        out.reconstruction,
        ncc_weight=model.config.ncc_weight,
        norm_pix_loss=model.config.norm_pix_loss,
    )
    golden.assert_matches(case_id, "loss", terms.loss)
    golden.assert_matches(case_id, "loss_mse_all", terms.mse)
    golden.assert_matches(case_id, "loss_ncc", terms.ncc)
    checked = set(outputs) | {"ids_shuffle", "loss_mse_all", "loss_ncc"}
    if "target" in expected:
        golden.assert_matches(case_id, "target", norm_pix_target(target))
        checked.add("target")
    if "ncc_metric" in expected:
        golden.assert_matches(case_id, "ncc_metric", ncc(a["x"], out.reconstruction))
        checked.add("ncc_metric")
    assert expected <= checked, f"unchecked expected arrays: {expected - checked}"


def test_len_keep_uses_python_float_arithmetic() -> None:
    assert num_kept(300, 0.8) == 59
    assert num_kept(60, 0.8) == 11
    assert golden.case(CASE)["keep_counts"]["len_keep"] == 11
    assert golden.arrays(CASE)["latent"].shape[1] == 1 + 11


def test_lit_mae_norm_changes_only_the_latent_normalisation() -> None:
    model, variables, a = _setup("dev/lit_mae/forward")
    plain = MAE(model.config.replace(lit_mae_norm=False)).apply(variables, a["x"], noise=a["noise"])
    lit = model.apply(variables, a["x"], noise=a["noise"])
    latent = np.asarray(lit.latent)
    # Parameter-free: zero mean and unbiased unit variance over D, whatever norm/scale holds.
    np.testing.assert_allclose(latent.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(latent.var(-1, ddof=1), 1.0, atol=1e-4)
    assert not np.allclose(plain.latent, lit.latent, atol=1e-3)
    assert "norm" in variables["params"]


def test_input_without_channel_axis_keeps_its_layout() -> None:
    model, variables, a = _setup(CASE)
    out = model.apply(variables, a["x"][:, 0], noise=a["noise"])
    assert out.reconstruction.shape == out.masked_reconstruction.shape == (2, 12, 500)
    golden.assert_matches(CASE, "imgs_hat", out.reconstruction[:, None])
    golden.assert_matches(CASE, "loss", out.loss)


def test_masked_reconstruction_keeps_visible_patches() -> None:
    model, variables, a = _setup(CASE)
    out = model.apply(variables, a["x"], noise=a["noise"])
    patches = np.asarray(patchify(out.masked_reconstruction, model.config.patch_size))
    removed = np.asarray(out.mask) == 1
    assert np.all(patches[removed] == 0)
    np.testing.assert_array_equal(patches[~removed], np.asarray(out.pred)[~removed])


def test_patchify_roundtrip_and_order() -> None:
    imgs = jnp.arange(2 * 1 * 12 * 500, dtype=jnp.float32).reshape(2, 1, 12, 500)
    patches = patchify(imgs, (1, 100))
    assert patches.shape == (2, 60, 100)
    # Token 7 = lead row 1, time column 2: samples 200..299 of lead 1.
    np.testing.assert_array_equal(patches[0, 7], imgs[0, 0, 1, 200:300])
    np.testing.assert_array_equal(unpatchify(patches, (1, 100), (12, 5)), imgs)


def test_noise_from_masking_rng() -> None:
    model, variables, a = _setup(CASE)
    run = functools.partial(model.apply, variables, a["x"])
    # "rbg" keys: XLA's RngBitGenerator compiles much faster than threefry on CPU.
    first = run(rngs={"masking": jax.random.key(0, impl="rbg")})
    again = run(rngs={"masking": jax.random.key(0, impl="rbg")})
    other = run(rngs={"masking": jax.random.key(1, impl="rbg")})
    np.testing.assert_array_equal(first.mask, again.mask)
    assert not np.array_equal(first.mask, other.mask)
    assert np.asarray(first.mask).sum(axis=1).tolist() == [49.0, 49.0]
    with pytest.raises(Exception, match="masking"):
        run()


def test_noise_shape_is_checked() -> None:
    model, variables, a = _setup(CASE)
    with pytest.raises(
        ValueError, match=r"expected random-masking noise of shape \(2, 60\), got \(2, 59\)"
    ):
        model.apply(variables, a["x"], noise=a["noise"][:, :59])


def test_jit_matches_reference() -> None:
    model, variables, a = _setup(CASE)
    out = jax.jit(lambda v, x, n: model.apply(v, x, noise=n))(variables, a["x"], a["noise"])
    golden.assert_matches(CASE, "loss", out.loss)
    golden.assert_matches(CASE, "pred", out.pred)


def test_vmap_over_examples() -> None:
    model, variables, a = _setup(CASE)

    def one(x: jax.Array, noise: jax.Array) -> jax.Array:
        return model.apply(variables, x[None], noise=noise[None]).pred[0]

    preds = jax.jit(jax.vmap(one))(jnp.asarray(a["x"]), jnp.asarray(a["noise"]))
    golden.assert_matches(CASE, "pred", preds)


def test_grad_of_loss() -> None:
    model, variables, a = _setup(CASE)

    def loss(params: dict) -> jax.Array:
        return model.apply({"params": params}, a["x"], noise=a["noise"]).loss

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    golden.assert_matches(CASE, "loss", value)
    for name in (
        "patch_embed",
        "cls_token",
        "blocks_0",
        "norm",
        "decoder_embed",
        "mask_token",
        "decoder_blocks_0",
        "decoder_norm",
        "decoder_pred",
    ):
        leaves = jax.tree.leaves(grads[name])
        assert all(np.all(np.isfinite(g)) for g in leaves)
        assert max(float(jnp.abs(g).max()) for g in leaves) > 0, name


def test_presets() -> None:
    tiny = MAEConfig.preset("tiny")
    assert (tiny.embed_dim, tiny.depth, tiny.num_heads) == (384, 3, 6)
    assert (tiny.decoder_embed_dim, tiny.decoder_depth, tiny.decoder_num_heads) == (256, 2, 8)
    assert (tiny.mask_ratio, tiny.ncc_weight, tiny.norm_pix_loss) == (0.8, 0.1, False)
    assert MAEConfig.preset("big").decoder_depth == 4
    assert MAEConfig.preset("huge").decoder_embed_dim == 512
    pluto = MAEConfig.preset("pluto")
    assert pluto.decoder_embed_dim % pluto.decoder_num_heads == 0
    for name in MAEConfig.PRESETS:
        cfg = MAEConfig.preset(name)
        assert MAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(
        ConfigError, match="decoder_embed_dim=256 is not divisible by decoder_num_heads=6"
    ):
        MAEConfig.preset("pluto", decoder_embed_dim=256)
