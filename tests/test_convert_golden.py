"""Every golden checkpoint converts, and the converted variables reproduce golden outputs.

One forward per checkpoint through our model module (jitted), compared with
``golden.assert_matches``; then the round trip torch → Flax → torch is the identity
on every golden file, and Flax → torch → Flax on fresh variables of every kind.
"""

from __future__ import annotations

import functools
from typing import Any

import golden
import jax
import numpy as np
import pytest

import convert
from convert.reading import read_checkpoint
from convert.rules import RULES, tensors_of, unwrap
from convert.targets import KINDS, LinearClassifierConfig, binding
from jaxecg.models import (
    CMRClassifier,
    CMRClassifierConfig,
    CMREncoder,
    LinearClassifier,
    ResNetConfig,
    SimCLR,
    SimCLRConfig,
    nchw_to_nhwc,
)
from jaxecg.models.ecg_classifier import ECGClassifier, ECGClassifierConfig
from jaxecg.models.mae import MAE, MAEConfig
from jaxecg.models.vit import ECGEncoder, ViTConfig

_VIT_FIELDS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias")
_MAE_FIELDS = (
    "decoder_embed_dim",
    "decoder_depth",
    "decoder_num_heads",
    "mask_ratio",
    "ncc_weight",
    "norm_pix_loss",
)


def _vit_fields(case_id: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    config = golden.case(case_id)["model"]["config"]
    fields = {k: config[k] for k in _VIT_FIELDS + extra if k in config}
    if "global_pool" in config:
        # The reference's falsy global_pool (norm + cls token) is our "token".
        fields["global_pool"] = config["global_pool"] or "token"
    return fields


def _checkpoint(case_id: str) -> str:
    return golden.case(case_id)["weights"]["checkpoint"]


def _load(case_id: str, kind: str, config: Any, checkpoint: str | None = None) -> dict:
    path = golden.checkpoint_path(checkpoint or _checkpoint(case_id))
    # Trained models are evaluated here: classifiers are restored, not set up to fine-tune.
    variables, report = convert.load(path, kind, config, mode="restore")
    assert report.coverage == 1.0
    return variables


def test_ecg_encoder_from_signal_encoder_file() -> None:
    case_id = "dev/ecg_encoder/no_pool"
    config = ViTConfig.from_dict(_vit_fields(case_id))
    variables = _load(case_id, "ecg_encoder", config)
    x = golden.arrays(case_id)["x"]
    golden.assert_matches(case_id, "out", jax.jit(ECGEncoder(config).apply)(variables, x))


@pytest.mark.parametrize(
    "case_id", ["dev/ecg_classifier/attention_pool", "dev/ecg_classifier/no_pool"]
)
def test_ecg_classifier_from_lightning_file(case_id: str) -> None:
    config = ECGClassifierConfig.from_dict(_vit_fields(case_id, ("num_classes", "mask_ratio")))
    variables = _load(case_id, "ecg_classifier", config)
    arrays = golden.arrays(case_id)
    logits = jax.jit(ECGClassifier(config).apply)(variables, arrays["x"], noise=arrays["noise"])
    golden.assert_matches(case_id, "logits", logits)


@pytest.mark.parametrize(
    ("case_id", "lit_mae_norm"), [("dev/mae/forward", False), ("dev/lit_mae/forward", True)]
)
def test_mae_from_pretraining_files(case_id: str, lit_mae_norm: bool) -> None:
    config = MAEConfig.from_dict(
        {**_vit_fields(case_id, _MAE_FIELDS), "lit_mae_norm": lit_mae_norm}
    )
    path = golden.checkpoint_path(_checkpoint(case_id))
    variables, report = convert.load(path, "mae", config)
    # The reference validates the 30 encoder keys; the decoder is loaded on top.
    assert (report.total, len(report.matched)) == (30, 30)
    assert "decoder_pred.weight" in report.extra_loaded and report.initialised == ()
    assert "decoder_pos_embed" not in report.extra_loaded
    for table in ("pos_embed", "decoder_pos_embed"):
        assert (
            f"{table}: equals our fixed sin-cos table (recomputed from the config, not loaded)"
            in report.notes
        )
    arrays = golden.arrays(case_id)
    out = jax.jit(MAE(config).apply)(variables, arrays["x"], noise=arrays["noise"])
    golden.assert_matches(case_id, "latent", out.latent)
    golden.assert_matches(case_id, "imgs_hat", out.reconstruction)
    golden.assert_matches(case_id, "loss", out.loss)


def test_cmr_encoder_from_image_encoder_and_raw_files() -> None:
    """``encoder_imaging.<i>`` (published file) and ``encoder.<i>`` (raw) give the same tree."""
    case_id = "dev/cmr_encoder/resnet18_eval_32px_b2"
    config = ResNetConfig.preset("resnet18")
    variables = _load(case_id, "cmr_encoder", config)
    raw = _load(
        case_id, "cmr_encoder", config, "dev/checkpoints/cmr_encoder_resnet18_raw_state_dict"
    )
    jax.tree.map(np.testing.assert_array_equal, raw, variables)
    x = nchw_to_nhwc(golden.arrays(case_id)["x"])
    golden.assert_matches(case_id, "out", jax.jit(CMREncoder(config).apply)(variables, x))


IMAGE_PARITY = [
    # The only read of the 94 MB (decompressed) resnet50 file in the suite.
    (
        "dev/cmr_encoder/resnet50_eval_64px_b2",
        "cmr_encoder",
        ResNetConfig.preset("resnet50"),
        CMREncoder,
        "out",
    ),
    (
        "dev/cmr_classifier/resnet18_mlp",
        "cmr_classifier",
        CMRClassifierConfig.preset("resnet18", num_classes=5, classifier_type="mlp"),
        CMRClassifier,
        "logits",
    ),
    ("dev/simclr/forward_eval", "simclr", SimCLRConfig.preset("resnet18"), SimCLR, "z"),
]


@pytest.mark.parametrize(
    ("case_id", "kind", "config", "module", "name"), IMAGE_PARITY, ids=[p[1] for p in IMAGE_PARITY]
)
def test_image_models_from_their_files(
    case_id: str, kind: str, config: Any, module: Any, name: str
) -> None:
    variables = _load(case_id, kind, config)
    x = nchw_to_nhwc(golden.arrays(case_id)["x"])
    golden.assert_matches(case_id, name, jax.jit(module(config).apply)(variables, x))


def test_simclr_online_classifier_from_the_simclr_file() -> None:
    case_id = "dev/linear_classifier/forward"
    config = LinearClassifierConfig(in_features=512, num_classes=5)
    variables = _load(case_id, "linear_classifier", config)
    logits = LinearClassifier(5).apply(variables, golden.arrays(case_id)["h"])
    golden.assert_matches(case_id, "logits", logits)


# ---------------------------------------------------------------------------- round trips

DEV_VIT = {"img_size": (1, 12, 500), "embed_dim": 64, "depth": 2, "num_heads": 4}
ROUND_TRIPS = [
    (
        "ecg_encoder",
        {**DEV_VIT, "global_pool": "attention_pool"},
        "dev/checkpoints/ecg_classifier_attention_pool",
    ),
    (
        "mae",
        {**DEV_VIT, "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 4},
        "dev/checkpoints/mae_pretrain_checkpoint",
    ),
    (
        "ecg_classifier",
        {**DEV_VIT, "num_classes": 5},
        "dev/checkpoints/ecg_classifier_attention_pool",
    ),
    (
        "cmr_encoder",
        {"backbone": "resnet18"},
        "dev/checkpoints/cmr_encoder_resnet18_raw_state_dict",
    ),
    (
        "cmr_classifier",
        {"encoder": {"backbone": "resnet18"}, "num_classes": 5, "classifier_type": "mlp"},
        "dev/checkpoints/cmr_classifier_resnet18_mlp",
    ),
    ("simclr", {"encoder": {"backbone": "resnet18"}}, "dev/checkpoints/simclr_resnet18"),
    (
        "linear_classifier",
        {"in_features": 512, "num_classes": 5},
        "dev/checkpoints/simclr_resnet18",
    ),
]


@functools.cache
def _state(checkpoint: str) -> dict[str, np.ndarray]:
    return tensors_of(unwrap(read_checkpoint(golden.checkpoint_path(checkpoint))))


def test_round_trips_cover_every_kind() -> None:
    assert sorted(kind for kind, _, _ in ROUND_TRIPS) == sorted(KINDS)


@pytest.mark.parametrize(
    ("kind", "config", "checkpoint"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS]
)
def test_torch_flax_torch_is_the_identity(kind: str, config: dict, checkpoint: str) -> None:
    state = _state(checkpoint)
    variables, report = convert.load(state, kind, config, mode="restore")
    assert report.missing == () and report.initialised == ()
    exported = convert.export(variables, kind, config)
    rule = RULES[kind]
    for key, tensor in exported.items():
        source_key = next(c for c in rule.candidates(key) if c in state)
        np.testing.assert_array_equal(tensor.numpy(), state[source_key], err_msg=key)
        assert tensor.numpy().dtype == state[source_key].dtype, key


FRESH = [
    ("ecg_encoder", {**DEV_VIT, "global_pool": "token"}),
    ("ecg_classifier", {**DEV_VIT, "num_classes": 3, "global_pool": "avg"}),
    ("cmr_classifier", {"encoder": {"backbone": "resnet18"}, "num_classes": 3}),
    ("simclr", {"encoder": {"backbone": "resnet18"}, "head_layout": "legacy"}),
]


@pytest.mark.parametrize(("kind", "config"), FRESH, ids=[f[0] for f in FRESH])
def test_flax_torch_flax_is_the_identity(kind: str, config: dict) -> None:
    """Layouts absent from the golden files (token pool, linear head, lightly-1.2 head) too."""
    target = binding(kind)
    rng = np.random.default_rng(0)
    # Random values everywhere (not an init, where zeros and ones would hide a mix-up).
    variables = jax.tree.map(
        lambda leaf: rng.standard_normal(leaf.shape).astype(leaf.dtype),
        target.abstract(target.config(config)),
    )
    exported = convert.export(variables, kind, config)
    restored, report = convert.load(exported, kind, config, strict=True, mode="restore")
    assert report.unexpected == () and report.initialised == ()
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
