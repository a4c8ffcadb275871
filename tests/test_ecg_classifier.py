"""ECGClassifier against the reference's forward_features / forward_head / forward.

Golden cases (eval mode, masking noise given): attention pool with ratio 0 (tokens only
permuted) and 0.25, blockwise lead/time masking, the cls-token path, and the avg pool's
features (the reference's forward crashes there). Every expected array is compared:
features, pre-logits, logits (double fc_norm), last-block attention map, masks and ids,
and the criterion's loss. Weights come from ``convert.load``.
"""

from __future__ import annotations

import functools

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import vit_golden

from convert.reading import read_checkpoint
from jaxecg.config import ConfigError
from jaxecg.losses import binary_cross_entropy_with_logits, cross_entropy
from jaxecg.models import ECGClassifier, ECGClassifierConfig, blockwise_masking, random_masking

CASES = golden.case_ids("dev/ecg_classifier/")
FULL_CASES = [c for c in CASES if not c.endswith("avg_head_error")]
ATTN_CASE = "dev/ecg_classifier/attention_pool"
MASKED_CASE = "dev/ecg_classifier/attention_pool_masked"
BLOCK_CASE = "dev/ecg_classifier/blockwise"


@functools.cache
def _setup(case_id: str) -> tuple[ECGClassifier, dict, dict]:
    cfg = vit_golden.classifier_config(case_id)
    return (
        ECGClassifier(cfg),
        vit_golden.variables(case_id, "ecg_classifier", cfg),
        golden.arrays(case_id),
    )


def _noise(a: dict) -> jax.Array | tuple[jax.Array, jax.Array]:
    return (a["noise_c"], a["noise_t"]) if "noise_c" in a else a["noise"]


def test_all_classifier_cases_covered() -> None:
    assert set(CASES) == {*FULL_CASES, "dev/ecg_classifier/avg_head_error"}
    assert len(FULL_CASES) == 4


@pytest.mark.parametrize("case_id", FULL_CASES)
def test_classifier_matches_reference(case_id: str) -> None:
    model, variables, a = _setup(case_id)
    noise = _noise(a)
    logits, state = model.apply(variables, a["x"], noise=noise, mutable=["intermediates"])
    features = model.apply(variables, a["x"], noise=noise, method="forward_features")
    pre_logits = model.apply(variables, features, pre_logits=True, method="forward_head")
    outputs = {"logits": logits, "features": features, "pre_logits": pre_logits}
    (attn_map,) = state["intermediates"]["attn_map"]
    outputs["attn_map"] = attn_map

    tokens = jnp.zeros((2, model.config.num_patches, 1))
    if model.config.masking_blockwise:
        kept = blockwise_masking(
            tokens,
            model.config.grid_size,
            *noise,
            model.config.mask_c_ratio,
            model.config.mask_t_ratio,
        )
        outputs.update(ids_keep_c=kept.ids_keep_c, ids_keep_t=kept.ids_keep_t)
    else:
        masked = random_masking(tokens, noise, model.config.mask_ratio)
        outputs.update(
            mask=masked.mask, ids_restore=masked.ids_restore, ids_shuffle=masked.ids_shuffle
        )

    if "loss" in a:
        outputs["loss"] = _criterion(case_id)(logits, a["y"])
    expected = set(golden.expected_names(case_id))
    assert expected <= set(outputs), f"unchecked expected arrays: {expected - set(outputs)}"
    for name in expected:
        golden.assert_matches(case_id, name, outputs[name])


def _criterion(case_id: str):
    """The reference criterion of the case's Lightning checkpoint."""
    if golden.case(case_id)["arrays"]["y"]["dtype"] == "int64":
        return functools.partial(cross_entropy, label_smoothing=0.1)
    state = read_checkpoint(golden.checkpoint_path(golden.case(case_id)["weights"]["checkpoint"]))
    pos_weight = np.asarray(state["state_dict"]["criterion.pos_weight"])
    return functools.partial(binary_cross_entropy_with_logits, pos_weight=pos_weight)


def test_avg_pool_features_match_reference_and_head_runs() -> None:
    case_id = "dev/ecg_classifier/avg_head_error"
    model, variables, a = _setup(case_id)
    features = model.apply(variables, a["x"], noise=a["noise"], method="forward_features")
    golden.assert_matches(case_id, "features", features)
    # The reference's forward raises here; the port's avg path runs (deviation).
    logits = model.apply(variables, a["x"], noise=a["noise"])
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


@pytest.mark.parametrize("case_id", [ATTN_CASE, MASKED_CASE])
def test_single_fc_norm_flag(case_id: str) -> None:
    model, variables, a = _setup(case_id)
    single = ECGClassifier(model.config.replace(double_fc_norm=False))
    logits = single.apply(variables, a["x"], noise=a["noise"])
    # `logits_single_fc_norm` is an info array of the golden case: head(features).
    np.testing.assert_allclose(np.asarray(logits), a["logits_single_fc_norm"], atol=1e-5)
    assert not np.allclose(logits, a["logits"], atol=1e-3)


def test_eval_without_noise_does_not_mask() -> None:
    model, variables, a = _setup(MASKED_CASE)
    unmasked, state = model.apply(variables, a["x"], mutable=["intermediates"])
    assert state["intermediates"]["attn_map"][0].shape == (2, 4, 61, 61)
    # Ratio 0 with noise only permutes the tokens: the same logits up to rounding.
    golden.assert_matches(ATTN_CASE, "logits", unmasked)


def test_training_masks_with_masking_rng_and_uses_dropout() -> None:
    model, variables, a = _setup(MASKED_CASE)
    run = jax.jit(
        lambda v, x, masking, dropout: model.apply(
            v,
            x,
            train=True,
            rngs={"masking": masking, "dropout": dropout},
            mutable=["intermediates"],
        )
    )
    # "rbg" keys: XLA's RngBitGenerator compiles much faster than threefry on CPU.
    key = functools.partial(jax.random.key, impl="rbg")
    first, state = run(variables, a["x"], key(0), key(1))
    again, _ = run(variables, a["x"], key(0), key(1))
    other_mask, _ = run(variables, a["x"], key(2), key(1))
    other_dropout, _ = run(variables, a["x"], key(0), key(3))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other_mask)
    assert not np.allclose(first, other_dropout)
    assert state["intermediates"]["attn_map"][0].shape == (2, 4, 46, 46)
    assert model.config.drop_rate == 0.1 and model.config.drop_path_rate == 0.0


def test_noise_validation() -> None:
    model, variables, a = _setup(BLOCK_CASE)
    with pytest.raises(ValueError, match="blockwise masking needs noise as a pair"):
        model.apply(variables, a["x"], noise=a["noise_c"])
    with pytest.raises(
        ValueError, match=r"expected time \(column\) noise of shape \(2, 5\), got \(2, 4\)"
    ):
        model.apply(variables, a["x"], noise=(a["noise_c"], a["noise_t"][:, :4]))
    model, variables, a = _setup(ATTN_CASE)
    with pytest.raises(ValueError, match=r"expected random-masking noise of shape \(2, 60\)"):
        model.apply(variables, a["x"], noise=a["noise"][:1])


def test_input_validation() -> None:
    model, variables, a = _setup(ATTN_CASE)
    with pytest.raises(ValueError, match=r"expected 12 leads.*got \(2, 1, 8, 500\)"):
        model.apply(variables, a["x"][:, :, :8])
    bad = a["x"].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        model.apply(variables, bad)


def test_jit_vmap_grad() -> None:
    model, variables, a = _setup(MASKED_CASE)
    jitted = jax.jit(lambda v, x, n: model.apply(v, x, noise=n))(variables, a["x"], a["noise"])
    golden.assert_matches(MASKED_CASE, "logits", jitted)

    def one(x: jax.Array, noise: jax.Array) -> jax.Array:
        return model.apply(variables, x[None], noise=noise[None])[0]

    golden.assert_matches(MASKED_CASE, "logits", jax.jit(jax.vmap(one))(a["x"], a["noise"]))

    y = jnp.array([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0]])

    def loss(params: dict) -> jax.Array:
        logits = model.apply({"params": params}, a["x"], noise=a["noise"])
        return binary_cross_entropy_with_logits(logits, y)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for name in ("head", "fc_norm", "attention_pool", "blocks_1", "patch_embed", "pos_embed"):
        leaves = jax.tree.leaves(grads[name])
        assert all(np.all(np.isfinite(g)) for g in leaves)
        assert max(float(jnp.abs(g).max()) for g in leaves) > 0, name


def test_config() -> None:
    cfg = ECGClassifierConfig.preset("tiny", num_classes=7)
    assert (cfg.embed_dim, cfg.num_classes, cfg.global_pool, cfg.double_fc_norm) == (
        384,
        7,
        "attention_pool",
        True,
    )
    assert ECGClassifierConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="mask_ratio"):
        ECGClassifierConfig(mask_ratio=1.0)
    with pytest.raises(ConfigError, match="unknown ECGClassifierConfig key"):
        ECGClassifierConfig.from_dict({"num_class": 3})
