"""``load_encoder`` / ``Encoder``: golden features from PyTorch checkpoints, every source
format, and the same output under apply, jit, vmap over single examples, lax.scan and
a batch sharded over the 4 forced host devices; input gradients (saliency).
"""

from __future__ import annotations

import dataclasses
import functools

import golden
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import vit_golden
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import convert
from jaxecg import Encoder, load_encoder
from jaxecg.data import preprocess_ecg, synthetic_cmr_record, synthetic_ecg_record
from jaxecg.encoders import as_encoder, load_model
from jaxecg.train.checkpoint import Checkpointer
from jaxecg.train.loop import TrainState

ECG_CASES = golden.case_ids("dev/ecg_encoder/")
ATTN_CASE = "dev/ecg_encoder/attention_pool"
CLASSIFIER_CASE = "dev/ecg_classifier/attention_pool"
CMR_CASE = "dev/cmr_encoder/resnet18_eval_32px_b2"
CMR_SINGLE_CASE = "dev/cmr_encoder/resnet18_eval_32px_b1"
# Eager (op-by-op) vs compiled, or 4 per-device batches vs one, reorder float32 sums:
# rounding-level differences only (measured <= 1.3e-6; golden tolerance is 2e-5).
SAME_ATOL = 1e-5


def _checkpoint(case_id: str):
    return golden.checkpoint_path(golden.case(case_id)["weights"]["checkpoint"])


@functools.cache
def _ecg_encoder(case_id: str = ATTN_CASE) -> Encoder:
    cfg = vit_golden.encoder_config(case_id)
    return load_encoder(_checkpoint(case_id), kind="ecg", **cfg.to_dict())


@functools.cache
def _cmr_encoder() -> Encoder:
    return load_encoder(_checkpoint(CMR_CASE), kind="cmr", preset="resnet18")


@functools.cache
def _jit_apply(enc: Encoder):
    """One compiled ``apply`` per encoder, shared by the tests (compiling is the slow part)."""
    return jax.jit(enc.apply, static_argnames="localized")


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))


def _ecg_batch() -> np.ndarray:
    """Four golden-shaped ECGs ``(4, 12, 500)``: one per forced device."""
    x = golden.arrays(ATTN_CASE)["x"][:, 0]
    return np.concatenate([x, -0.5 * x[::-1]])


# ---------------------------------------------------------------------------- golden parity


@pytest.mark.parametrize("case_id", ECG_CASES)
def test_torch_checkpoint_reproduces_golden_ecg_features(case_id: str) -> None:
    enc = _ecg_encoder(case_id)
    localized = golden.case(case_id)["call"]["localized"]
    out = _jit_apply(enc)(enc.params, golden.arrays(case_id)["x"], localized=localized)
    golden.assert_matches(case_id, "out", out)


def test_ecg_classifier_checkpoint_cut_to_its_encoder() -> None:
    """The classifier read whole (head included) and cut down gives the encoder's features."""
    cfg = vit_golden.classifier_config(CLASSIFIER_CASE)
    model = load_model(_checkpoint(CLASSIFIER_CASE), kind="ecg_classifier", **cfg.to_dict())
    assert "head" in model.variables["params"]
    enc = as_encoder(model)
    assert "head" not in enc.params["params"]
    golden.assert_matches(
        ATTN_CASE, "out", jax.jit(enc.apply)(enc.params, golden.arrays(ATTN_CASE)["x"])
    )


def test_torch_checkpoint_reproduces_golden_cmr_features() -> None:
    enc = _cmr_encoder()
    assert set(enc.params) == {"params", "batch_stats"}
    apply = _jit_apply(enc)
    golden.assert_matches(CMR_CASE, "out", apply(enc.params, _nhwc(golden.arrays(CMR_CASE)["x"])))
    # One unbatched image gives unbatched features, like the reference's squeezed B=1 output.
    single = _nhwc(golden.arrays(CMR_SINGLE_CASE)["x"])[0]
    golden.assert_matches(CMR_SINGLE_CASE, "out", apply(enc.params, single))


# ---------------------------------------------------------------------------- transformations


@functools.cache
def _ecg_reference() -> np.ndarray:
    enc = _ecg_encoder()
    out = np.asarray(enc.apply(enc.params, _ecg_batch()))
    golden.assert_matches(ATTN_CASE, "out", out[:2])
    return out


def test_jit_matches_apply() -> None:
    enc = _ecg_encoder()
    out = np.asarray(_jit_apply(enc)(enc.params, _ecg_batch()))
    np.testing.assert_allclose(out, _ecg_reference(), rtol=0, atol=SAME_ATOL)


def test_vmap_over_single_examples_matches_apply() -> None:
    enc = _ecg_encoder()
    per_example = functools.partial(enc.apply, enc.params)
    out = jax.vmap(per_example)(_ecg_batch())
    np.testing.assert_allclose(out, _ecg_reference(), rtol=0, atol=SAME_ATOL)
    # Compiled, vmap over examples is bit-identical to the batched call.
    np.testing.assert_array_equal(
        jax.jit(jax.vmap(per_example))(_ecg_batch()), _jit_apply(enc)(enc.params, _ecg_batch())
    )


def test_sharded_over_four_devices_matches_apply() -> None:
    enc = _ecg_encoder()
    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    x = jax.device_put(_ecg_batch(), NamedSharding(mesh, PartitionSpec("data")))
    params = jax.device_put(enc.params, NamedSharding(mesh, PartitionSpec()))
    out = _jit_apply(enc)(params, x)
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), out.ndim)
    np.testing.assert_allclose(np.asarray(out), _ecg_reference(), rtol=0, atol=SAME_ATOL)


def test_lax_scan_over_batches_matches_apply() -> None:
    enc = _ecg_encoder()

    def step(carry: None, batch: jax.Array) -> tuple[None, jax.Array]:
        return carry, enc.apply(enc.params, batch)

    _, out = jax.lax.scan(step, None, _ecg_batch().reshape(2, 2, 12, 500))
    np.testing.assert_allclose(out.reshape(4, -1), _ecg_reference(), rtol=0, atol=SAME_ATOL)


def test_localized_tokens_under_jit() -> None:
    enc = _ecg_encoder()
    tokens = _jit_apply(enc)(enc.params, _ecg_batch(), localized=True)
    assert tokens.shape == (4, enc.config.num_patches, enc.feature_dim)


def test_input_gradient_exists_and_is_finite() -> None:
    enc = _ecg_encoder()
    x = _ecg_batch()
    saliency = jax.jit(jax.grad(lambda x: jnp.sum(enc.apply(enc.params, x)[:, 0])))(x)
    assert saliency.shape == x.shape
    assert np.all(np.isfinite(saliency)) and float(jnp.max(jnp.abs(saliency))) > 0.0


def test_cmr_inference_mode_is_per_example() -> None:
    """Running BatchNorm statistics: an image's features do not depend on its batch."""
    enc = _cmr_encoder()
    x = _nhwc(golden.arrays(CMR_CASE)["x"])
    batched = _jit_apply(enc)(enc.params, x)
    singles = jax.jit(jax.vmap(functools.partial(enc.apply, enc.params)))(x)
    np.testing.assert_allclose(singles, batched, rtol=0, atol=SAME_ATOL)


# ---------------------------------------------------------------------------- other sources


def test_convert_save_directory_gives_the_same_encoder(tmp_path) -> None:
    enc = _ecg_encoder()
    convert.save(enc.params, tmp_path / "enc", kind="ecg_encoder", config=enc.config)
    again = load_encoder(tmp_path / "enc")
    assert again.config == enc.config
    x = _ecg_batch()
    np.testing.assert_array_equal(
        jax.jit(again.apply)(again.params, x), _jit_apply(enc)(enc.params, x)
    )


def test_training_checkpoint_of_simclr_gives_its_resnet(tmp_path) -> None:
    """SimCLR runs nest the model under params["model"]; optimiser state is not read."""
    # Golden SimCLR weights: converting them is much cheaper here than a random init.
    model = load_model(
        golden.checkpoint_path("dev/checkpoints/simclr_resnet18"), kind="simclr", preset="resnet18"
    )
    cfg, variables = model.config, model.variables
    params = {"model": variables["params"], "classifier": {"kernel": jnp.ones((512, 2))}}
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=optax.adam(1e-3).init(params),
        first_bad_step=jnp.zeros((), jnp.int32),
    )
    checkpoints = Checkpointer(tmp_path / "run" / "checkpoints", async_save=False)
    experiment = {
        "task": "simclr_pretrain",
        "model": cfg.to_dict(),
        "data": {"augment": {"img_size": 64}},
    }
    checkpoints.save(7, state, data_state=None, config=experiment)
    checkpoints.close()

    enc = load_encoder(tmp_path / "run")
    assert (enc.kind, enc.config.backbone, enc.image_size) == ("cmr", "resnet18", 64)
    expected = jax.tree.map(
        np.asarray,
        {
            "params": variables["params"]["encoder_imaging"],
            "batch_stats": variables["batch_stats"]["encoder_imaging"],
        },
    )
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, enc.params), expected)


def test_mae_encoder_half_gives_the_golden_cls_latent() -> None:
    """Cut from an MAE checkpoint, the encoder's cls-token features are the reference's
    latent cls row at mask ratio 0 (every token kept, merely shuffled)."""
    case_id = "dev/mae/forward_mask_ratio_0"
    cfg = vit_golden.mae_config(case_id)
    model = load_model(_checkpoint(case_id), kind="mae", **cfg.to_dict())
    enc = as_encoder(model)
    assert enc.config.global_pool == "token" and "decoder_embed" not in enc.params["params"]
    features = jax.jit(enc.apply)(enc.params, golden.arrays(case_id)["x"])
    latent_cls = golden.arrays(case_id)["latent"][:, 0]
    atol = golden.case(case_id)["arrays"]["latent"]["atol"]
    np.testing.assert_allclose(features, latent_cls, rtol=0, atol=atol)


def test_preset_random_init() -> None:
    small = {"img_size": (1, 12, 500), "embed_dim": 32, "num_heads": 2}
    enc = load_encoder("pluto", kind="ecg", seed=1, **small)
    assert (enc.kind, enc.config.embed_dim, enc.config.depth) == ("ecg", 32, 2)
    assert enc.params["params"]["pos_embed"].shape == (1, 1 + 60, 32)


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        ("tiny", {}, "pass kind="),
        ("tiny", {"kind": "linear_classifier"}, "has no encoder"),
        ("tinier", {"kind": "ecg"}, "neither a file, a directory nor a ecg_encoder preset"),
        ("tiny", {"kind": "ecg", "preset": "tiny"}, "no file or directory"),
        ("tiny", {"kind": "ecg", "depht": 2}, "depht"),
    ],
)
def test_bad_source_raises(source: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_encoder(source, **kwargs)


def test_directory_rejects_overrides(tmp_path) -> None:
    enc = _ecg_encoder()
    convert.save(enc.params, tmp_path / "enc", kind="ecg_encoder", config=enc.config)
    with pytest.raises(ValueError, match="records its own model config"):
        load_encoder(tmp_path / "enc", depth=3)
    with pytest.raises(ValueError, match="not kind='cmr'"):
        load_encoder(tmp_path / "enc", kind="cmr")


def test_localized_cmr_raises() -> None:
    enc = _cmr_encoder()
    with pytest.raises(ValueError, match="localized=True needs an ECG encoder"):
        enc.apply(enc.params, np.zeros((1, 32, 32, 3), np.float32), localized=True)


# ---------------------------------------------------------------------------- preprocess


def test_ecg_preprocess_is_reference_preprocessing_then_crop() -> None:
    enc = _ecg_encoder()
    raw = np.stack([synthetic_ecg_record(i, raw=True)[0] for i in range(2)])
    out = enc.preprocess(raw)
    assert out.shape == (2, 12, 500) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out[1], preprocess_ecg(raw[1])[:, :500])
    np.testing.assert_array_equal(enc.preprocess(raw[0]), out[0])


def test_cmr_preprocess_resizes_to_image_size() -> None:
    enc = dataclasses.replace(_cmr_encoder(), image_size=48)
    image = synthetic_cmr_record(0, size=96)[0]
    out = enc.preprocess(image[None])
    assert out.shape == (1, 48, 48, 3)
    # A constant image stays constant under an antialiased resize.
    np.testing.assert_allclose(
        enc.preprocess(np.full((96, 96, 3), 0.25, np.float32)), 0.25, atol=1e-6
    )
    with pytest.raises(ValueError, match="expected float images"):
        enc.preprocess((image * 255).astype(np.uint8))
