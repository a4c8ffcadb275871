"""Which Flax module each kind loads into, and the torch names of its variables.

A :class:`Binding` knows a kind's config class, how to build and initialise the
module, where its subtrees sit in the reference's torch namespace (``mounts``), and
the fixed tables the reference keeps in its state dict but our module recomputes
(MAE ``pos_embed``/``decoder_pos_embed``). Model classes are imported when a kind is
first used, so converting a ResNet never imports the ViT code and vice versa.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import jax
import numpy as np
from flax import linen as nn

from convert.layouts import Entry, build_entries
from convert.names import Mount
from jaxecg.config import Config
from jaxecg.errors import ConfigError

ROOT = (Mount((), ""),)
VARIABLE_COLLECTIONS = ("params", "batch_stats")

Classes = tuple[type[Config], Callable[[Any], nn.Module]]


@dataclasses.dataclass(frozen=True)
class LinearClassifierConfig(Config):
    """The reference ``LinearClassifier(in_size, num_classes, init_type)`` as a config."""

    in_features: int = 512
    num_classes: int = 2
    init_type: Literal["normal", "xavier", "kaiming", "orthogonal"] = "kaiming"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "resnet18": {"in_features": 512},
        "resnet50": {"in_features": 2048},
    }


def _lazy(module: str, config: str, model: str) -> Callable[[], Classes]:
    """Classes of a kind, imported on first use."""

    def classes() -> Classes:
        found = importlib.import_module(module)
        return getattr(found, config), getattr(found, model)

    return classes


def _linear_classifier() -> Classes:
    from jaxecg.models.heads import LinearClassifier

    def build(cfg: LinearClassifierConfig) -> nn.Module:
        return LinearClassifier(cfg.num_classes, cfg.init_type)

    return LinearClassifierConfig, build


def _ecg_input(cfg: Any) -> np.ndarray:
    """A zero ECG batch ``(1, C, leads, T)`` of the config's ``img_size``."""
    return np.zeros((1, *cfg.img_size), np.float32)


def _image_input(cfg: Any) -> np.ndarray:
    """A zero NHWC image batch; 32 px is the smallest size every ResNet stage handles."""
    resnet = getattr(cfg, "encoder", cfg)
    return np.zeros((1, 32, 32, resnet.in_channels), np.float32)


def _features_input(cfg: LinearClassifierConfig) -> np.ndarray:
    return np.zeros((1, cfg.in_features), np.float32)


def _mae_tables(cfg: Any) -> dict[str, np.ndarray]:
    from jaxecg.models.pos_embed import sincos_pos_embed_f32

    grid = cfg.grid_size
    return {
        "pos_embed": sincos_pos_embed_f32(cfg.embed_dim, grid),
        "decoder_pos_embed": sincos_pos_embed_f32(cfg.decoder_embed_dim, grid),
    }


def _no_tables(cfg: Any) -> dict[str, np.ndarray]:
    return {}


def _no_keys(cfg: Any) -> dict[str, tuple[int, ...]]:
    return {}


def _ecg_constructor_norm(cfg: Any) -> dict[str, tuple[int, ...]]:
    """The timm ``norm`` the reference's classifier still has while loading for fine-tuning;
    with a pooled head it is replaced afterwards (our module never has it)."""
    if cfg.global_pool == "token":
        return {}
    return {"norm.weight": (cfg.embed_dim,), "norm.bias": (cfg.embed_dim,)}


def _cmr_criterion(cfg: Any) -> dict[str, np.ndarray]:
    """``CrossEntropyLoss(weight=...)`` keeps its class weights as ``criterion.weight``."""
    if cfg.class_weights is None:
        return {}
    return {"criterion.weight": np.asarray(cfg.class_weights, np.float32)}


@dataclasses.dataclass(frozen=True)
class Binding:
    """A kind's Flax side: classes, example input, torch namespace, and the reference's keys
    our module does not hold, which its loading counts all the same.

    ``fixed_tables``: state-dict tables our module recomputes (MAE sin-cos tables).
    ``constructor_only``: ``{key: shape}`` of modules the reference's classifier has while
    loading for fine-tuning but not afterwards. ``criterion``: the loss buffers a trained
    reference classifier stores (``criterion.weight``), counted when restoring one.
    """

    kind: str
    classes: Callable[[], Classes]
    example_input: Callable[[Any], np.ndarray]
    mounts: tuple[Mount, ...] = ROOT
    fixed_tables: Callable[[Any], dict[str, np.ndarray]] = _no_tables
    constructor_only: Callable[[Any], dict[str, tuple[int, ...]]] = _no_keys
    criterion: Callable[[Any], dict[str, np.ndarray]] = _no_tables

    @property
    def config_cls(self) -> type[Config]:
        return self.classes()[0]

    def config(self, config: Config | Mapping[str, Any] | None) -> Config:
        """``config`` as this kind's config class (``None`` → its defaults; dicts are parsed)."""
        cls = self.config_cls
        if config is None:
            return cls()
        if isinstance(config, Mapping):
            return cls.from_dict(dict(config))
        if not isinstance(config, cls):
            raise ConfigError(
                f"kind {self.kind!r} expects a {cls.__name__}, got {type(config).__name__}"
            )
        return config

    def module(self, config: Config) -> nn.Module:
        return self.classes()[1](config)

    def init(self, config: Config, seed: int = 0) -> dict[str, Any]:
        """Freshly initialised variables (``params``/``batch_stats``)."""
        # One compiled init is far cheaper than dispatching every initialiser op eagerly,
        # and caching it per (kind, config) compiles once however many seeds are asked for.
        return _compiled_init(self, config)(seed)

    def abstract(self, config: Config) -> dict[str, Any]:
        """The variables' shapes and dtypes (``jax.ShapeDtypeStruct`` leaves), no compute."""
        return _abstract(self, config)

    def entries(self, config: Config) -> tuple[list[Entry], dict[str, Any]]:
        """Torch-key entries covering every leaf, and the abstract tree they came from."""
        abstract = self.abstract(config)
        return build_entries(abstract, self.mounts), abstract


@functools.cache
def _abstract(binding: Binding, config: Config) -> dict[str, Any]:
    # Tracing a model's init takes a while; every load of the same config reuses it.
    return jax.eval_shape(functools.partial(_init, binding, config, 0))


@functools.cache
def _compiled_init(binding: Binding, config: Config) -> Callable[[int], dict[str, Any]]:
    return jax.jit(functools.partial(_init, binding, config))


def _init(binding: Binding, config: Config, seed: int | jax.Array) -> dict[str, Any]:
    key = jax.random.key(seed)
    # "masking"/"dropout" are drawn by the MAE and classifier; unused streams are ignored.
    rngs = {
        name: jax.random.fold_in(key, i) for i, name in enumerate(("params", "masking", "dropout"))
    }
    variables = binding.module(config).init(rngs, binding.example_input(config))
    # Only weights and running statistics; e.g. sown "intermediates" are not state.
    return {k: v for k, v in variables.items() if k in VARIABLE_COLLECTIONS}


BINDINGS: dict[str, Binding] = {
    b.kind: b
    for b in (
        Binding("ecg_encoder", _lazy("jaxecg.models.vit", "ViTConfig", "ECGEncoder"), _ecg_input),
        Binding(
            "mae",
            _lazy("jaxecg.models.mae", "MAEConfig", "MAE"),
            _ecg_input,
            fixed_tables=_mae_tables,
        ),
        Binding(
            "ecg_classifier",
            _lazy("jaxecg.models.ecg_classifier", "ECGClassifierConfig", "ECGClassifier"),
            _ecg_input,
            constructor_only=_ecg_constructor_norm,
        ),
        Binding(
            "cmr_encoder",
            _lazy("jaxecg.models.resnet", "ResNetConfig", "CMREncoder"),
            _image_input,
            (Mount((), "encoder.", resnet=True),),
        ),
        Binding(
            "cmr_classifier",
            _lazy("jaxecg.models.cmr_classifier", "CMRClassifierConfig", "CMRClassifier"),
            _image_input,
            (Mount(("encoder",), "encoder.", resnet=True), *ROOT),
            criterion=_cmr_criterion,
        ),
        Binding(
            "simclr",
            _lazy("jaxecg.models.simclr", "SimCLRConfig", "SimCLR"),
            _image_input,
            (Mount(("encoder_imaging",), "encoder_imaging.encoder.", resnet=True), *ROOT),
        ),
        Binding("linear_classifier", _linear_classifier, _features_input),
    )
}
KINDS = tuple(BINDINGS)


def binding(kind: str) -> Binding:
    if kind not in BINDINGS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {list(KINDS)}")
    return BINDINGS[kind]
