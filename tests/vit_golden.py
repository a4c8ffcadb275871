"""Golden ViT/MAE/classifier cases as our configs and converted weights.

The manifest stores each case's reference constructor arguments; this module maps them
onto ``ViTConfig``/``MAEConfig``/``ECGClassifierConfig`` and loads the case's checkpoint
through ``convert.load``, so every parity test reads "config, weights, run, compare".
"""

from __future__ import annotations

import functools
from typing import Any

import golden
import jax
import numpy as np
from flax import linen as nn

import convert
from jaxecg.config import Config
from jaxecg.models import ECGClassifierConfig, MAEConfig, ViTConfig

_BACKBONE_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
_CLASSIFIER_KEYS = (
    "num_classes",
    "mask_ratio",
    "masking_blockwise",
    "mask_c_ratio",
    "mask_t_ratio",
)
_MAE_KEYS = (
    "decoder_embed_dim",
    "decoder_depth",
    "decoder_num_heads",
    "ncc_weight",
    "norm_pix_loss",
)


def _backbone(case_id: str) -> dict[str, Any]:
    ref = golden.case(case_id)["model"]["config"]
    assert ref["norm_layer"] == "LayerNorm(eps=1e-6)"
    return {k: ref[k] for k in _BACKBONE_KEYS}


def _global_pool(case_id: str) -> str:
    # The reference's falsy global_pool (False) is the cls-token path, "token" here.
    return golden.case(case_id)["model"]["config"]["global_pool"] or "token"


def encoder_config(case_id: str) -> ViTConfig:
    return ViTConfig.from_dict({**_backbone(case_id), "global_pool": _global_pool(case_id)})


def classifier_config(case_id: str) -> ECGClassifierConfig:
    ref = golden.case(case_id)["model"]["config"]
    extra = {k: ref[k] for k in _CLASSIFIER_KEYS if k in ref}
    return ECGClassifierConfig.from_dict(
        {**_backbone(case_id), "global_pool": _global_pool(case_id), **extra}
    )


def mae_config(case_id: str) -> MAEConfig:
    case = golden.case(case_id)
    ref = case["model"]["config"]
    return MAEConfig.from_dict(
        {
            **_backbone(case_id),
            **{k: ref[k] for k in _MAE_KEYS},
            "mask_ratio": case["call"]["mask_ratio"],
            "lit_mae_norm": case["model"]["class"] == "LitMAE",
        }
    )


@functools.cache
def _load(checkpoint_id: str, kind: str, config: Config) -> dict[str, Any]:
    variables, _ = convert.load(golden.checkpoint_path(checkpoint_id), kind, config)
    return variables


def variables(case_id: str, kind: str, config: Config) -> dict[str, Any]:
    """The case's checkpoint converted by ``convert.load`` for ``kind``/``config`` (cached)."""
    return _load(golden.case(case_id)["weights"]["checkpoint"], kind, config)


def random_variables(module: nn.Module, *args: Any, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Variables of ``module``'s shapes filled with N(0, 0.1^2) numpy draws.

    Shapes come from ``eval_shape`` of ``init``, so no initialiser is compiled: random
    initialisers dominate the CPU test time otherwise.
    """
    shapes = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.key(0), *args)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(scale=0.1, size=s.shape).astype(s.dtype), shapes)
