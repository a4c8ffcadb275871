"""Pretrained encoders as pure functions: load once, then ``apply`` anywhere in JAX.

:func:`load_encoder` turns a PyTorch checkpoint, an Orbax directory (written by
``convert.save`` or by ``jaxecg train``) or a preset name into an immutable
:class:`Encoder`. Its ``apply(params, x, *, localized=False)`` is a pure function of
``params`` and ``x`` — inference mode, ResNet BatchNorm on its running statistics —
so it composes with ``jit``, ``vmap``, ``grad``, ``lax.scan`` and sharded inputs.

Every source is first read as a whole model (:func:`load_model`, through the one
reader of weights sources :mod:`jaxecg.weights`: the variables, the model kind of
``convert.targets`` and its config), then cut down to its encoder:
an ECG classifier loses its ``head``, an MAE keeps its encoder half (cls-token
features, its fixed sin-cos table as ``pos_embed``), SimCLR and the CMR classifier
keep their ResNet.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxecg.config import Config
from jaxecg.data.augment_cmr import resize
from jaxecg.data.augment_ecg import crop
from jaxecg.data.preprocess import preprocess_ecg
from jaxecg.errors import CheckpointError, DataError, UsageError
from jaxecg.models.pos_embed import sincos_pos_embed_f32
from jaxecg.models.resnet import CMREncoder, ResNetConfig
from jaxecg.models.vit import ECGEncoder, ViTConfig
from jaxecg.weights import LoadedModel, read_directory

PyTree = Any
EncoderKind = Literal["ecg", "cmr"]

# The reference resizes CMR frames to 210 px unless a training config says otherwise
# (docs/reference.md#cmr-augmentations).
DEFAULT_IMAGE_SIZE = 210

# Model kinds (``convert.targets.KINDS``) that contain an encoder, by modality.
_MODEL_KINDS: dict[str, EncoderKind] = {
    "ecg_encoder": "ecg",
    "ecg_classifier": "ecg",
    "mae": "ecg",
    "cmr_encoder": "cmr",
    "cmr_classifier": "cmr",
    "simclr": "cmr",
}
# What ``kind="ecg"``/``"cmr"`` means for a checkpoint file or a preset.
_DEFAULT_MODEL_KIND = {"ecg": "ecg_encoder", "cmr": "cmr_encoder"}
# Subtree holding the ResNet inside a CMR model's variables.
_RESNET_SUBTREE = {"cmr_classifier": "encoder", "simclr": "encoder_imaging"}


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
    """An ECG ViT or CMR ResNet encoder as data plus pure functions.

    ``params``: the variables pytree (``{"params": ...}``; the ResNet also carries
    ``"batch_stats"``, used read-only). ``kind``: ``"ecg"`` or ``"cmr"``. ``config``:
    the :class:`ViTConfig` or :class:`ResNetConfig`. ``image_size``: the square CMR
    input size :meth:`preprocess` resizes to (``None`` for ECG). ``source``: what it was
    loaded from, for its ``repr`` (a one-line summary instead of every parameter).
    """

    kind: EncoderKind
    config: ViTConfig | ResNetConfig
    params: PyTree
    image_size: int | None = None
    source: str | None = None

    def __repr__(self) -> str:
        sizes = (np.size(leaf) for leaf in jax.tree.leaves(self.params.get("params", {})))
        fields = {
            "kind": repr(self.kind),
            "preset": None if self.preset is None else repr(self.preset),
            "feature_dim": self.feature_dim,
            "params": _count(sum(sizes)),
            "image_size": self.image_size,
            "source": None if self.source is None else repr(self.source),
        }
        shown = ", ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"Encoder({shown})"

    @property
    def preset(self) -> str | None:
        """The preset whose architecture the config has (``None`` for a custom one)."""
        presets = type(self.config).PRESETS.items()
        matches = (
            n for n, fs in presets if all(getattr(self.config, k) == v for k, v in fs.items())
        )
        return next(matches, None)

    @property
    def module(self) -> nn.Module:
        return ECGEncoder(self.config) if self.kind == "ecg" else CMREncoder(self.config)

    @property
    def feature_dim(self) -> int:
        """``D`` of the ``(B, D)`` features (and of the localized tokens)."""
        return self.config.embed_dim if self.kind == "ecg" else self.config.pooled_dim

    def apply(self, params: PyTree, x: Any, *, localized: bool = False) -> jax.Array:
        """Features of ``x`` under ``params``; pure, inference mode.

        ECG: ``(B, leads, T)`` or ``(B, 1, leads, T)`` → ``(B, D)``; ``localized=True``
        gives the patch tokens ``(B, N, D)``. CMR: NHWC ``(B, H, W, C)`` → ``(B, F)``.
        A single example (``(leads, T)``, ``(H, W, C)``) gives unbatched output, so
        ``jax.vmap(functools.partial(enc.apply, params))`` maps over examples.
        ``localized`` is a Python bool (static under ``jit``).
        """
        single_ndim = 2 if self.kind == "ecg" else 3
        single = jnp.ndim(x) == single_ndim
        if single:
            x = jnp.asarray(x)[None]
        if self.kind == "ecg":
            out = self.module.apply(params, x, localized=localized)
        elif localized:
            raise UsageError(
                "localized=True needs an ECG encoder; the CMR ResNet pools its features"
            )
        else:
            out = self.module.apply(params, x, train=False)
        return out[0] if single else out

    def preprocess(self, raw: Any) -> jax.Array:
        """Raw input → what :meth:`apply` takes, as the reference prepared it.

        ECG: ``(12, T)`` or ``(B, 12, T)`` millivolts at 500 Hz, ``T >= 5000`` → the
        offline preprocessing (:func:`~jaxecg.data.preprocess_ecg`) then the evaluation
        crop (start 0) to the model's time length: ``(..., 12, img_size[2])`` float32.
        CMR: float images in [0, 1], ``(H, W, C)`` or ``(B, H, W, C)`` → resized to
        ``(..., image_size, image_size, C)`` (bilinear, antialiased).
        """
        if self.kind == "ecg":
            raw = np.asarray(raw)
            if raw.ndim not in (2, 3):
                raise DataError(f"expected a raw ECG (12, T) or batch (B, 12, T), got {raw.shape}")
            batch = raw if raw.ndim == 3 else raw[None]
            full = np.stack([preprocess_ecg(record) for record in batch])
            out = jnp.asarray(crop(None, full, self.config.img_size[2], train=False))
            return out if raw.ndim == 3 else out[0]
        images = jnp.asarray(raw)
        if images.ndim not in (3, 4):
            raise DataError(f"expected images (H, W, C) or (B, H, W, C), got shape {images.shape}")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise DataError(
                f"expected float images in [0, 1], got dtype {images.dtype}; "
                "convert first (e.g. uint8 / 255)"
            )
        fit = jax.vmap(resize, in_axes=(0, None)) if images.ndim == 4 else resize
        return fit(images.astype(jnp.float32), self.image_size)


# ---------------------------------------------------------------------------- sources


def load_encoder(
    source: str | Path,
    *,
    kind: str | None = None,
    preset: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    **overrides: Any,
) -> Encoder:
    """The encoder in ``source``, as an immutable :class:`Encoder`.

    ``source``: a PyTorch checkpoint file (``kind`` required: ``"ecg"``/``"cmr"`` or a
    model kind such as ``"mae"``, ``"ecg_classifier"``, ``"simclr"``; the model config
    is ``preset`` with ``overrides``, default the config class's defaults), an Orbax
    directory from ``convert.save`` or a training run (config read from it), or a preset
    name for random initialisation with ``seed`` (``kind`` required; ECG ``pluto`` ...
    ``huge``, CMR ``resnet18``/``resnet50``). ``image_size``: CMR resize target of
    :meth:`Encoder.preprocess` (default: the training config's, else 210).
    """
    # Only the encoder is kept, so a classifier file is read as fine-tuning reads it.
    model = load_model(source, kind=kind, preset=preset, seed=seed, mode="finetune", **overrides)
    return dataclasses.replace(as_encoder(model, image_size), source=str(source))


def load_model(
    source: str | Path,
    *,
    kind: str | None = None,
    preset: str | None = None,
    seed: int = 0,
    mode: Literal["finetune", "restore"] = "restore",
    **overrides: Any,
) -> LoadedModel:
    """Read ``source`` (see :func:`load_encoder`) as a whole model, without cutting it down.

    ``mode`` (a classifier checkpoint file, see :func:`convert.load`): ``"restore"``, a
    trained classifier, refuses a file without its head and pooling (a bare encoder
    would give a random head); ``"finetune"`` accepts one, as fine-tuning starts.
    """
    path = Path(source)
    if path.is_dir():
        if preset is not None or overrides:
            given = ["preset"] * (preset is not None) + sorted(overrides)
            raise UsageError(f"{str(source)!r} records its own model config; do not pass {given}")
        loaded = read_directory(path)
        if kind is not None and kind not in (loaded.kind, _MODEL_KINDS.get(loaded.kind)):
            raise UsageError(f"{str(source)!r} holds a {loaded.kind!r} model, not kind={kind!r}")
        return loaded
    model_kind = _model_kind(kind, source)
    from convert.targets import binding

    target = binding(model_kind)
    if path.is_file():
        import convert

        config = _config(target.config_cls, preset, overrides)
        variables, _ = convert.load(path, model_kind, config, mode=mode)
        return LoadedModel(variables, model_kind, config)
    if preset is not None:
        raise UsageError(f"no file or directory {str(source)!r} (with preset={preset!r})")
    if str(source) not in target.config_cls.PRESETS:
        raise UsageError(
            f"{str(source)!r} is neither a file, a directory nor a {model_kind} preset "
            f"(presets: {sorted(target.config_cls.PRESETS)})"
        )
    config = target.config_cls.preset(str(source), **overrides)
    return LoadedModel(target.init(config, seed), model_kind, config)


def _model_kind(kind: str | None, source: str | Path) -> str:
    if kind is None:
        raise UsageError(
            f"{str(source)!r}: pass kind= ('ecg', 'cmr' or one of {sorted(_MODEL_KINDS)}) "
            "for a checkpoint file or a preset"
        )
    model_kind = _DEFAULT_MODEL_KIND.get(kind, kind)
    if model_kind not in _MODEL_KINDS:
        raise UsageError(
            f"kind={kind!r} has no encoder; expected 'ecg', 'cmr' or one of {sorted(_MODEL_KINDS)}"
        )
    return model_kind


def _config(cls: type[Config], preset: str | None, overrides: dict[str, Any]) -> Config:
    return cls.preset(preset, **overrides) if preset is not None else cls.from_dict(overrides)


# ---------------------------------------------------------------------------- model -> encoder


def as_encoder(model: LoadedModel, image_size: int | None = None) -> Encoder:
    """Cut a whole model down to its encoder (see the module docstring)."""
    if model.kind not in _MODEL_KINDS:
        raise UsageError(
            f"a {model.kind!r} model has no encoder; expected one of {sorted(_MODEL_KINDS)}"
        )
    params = model.variables["params"]
    if _MODEL_KINDS[model.kind] == "ecg":
        config = _vit_config(model.kind, model.config)
        if model.kind == "mae":
            params = {
                k: v
                for k, v in params.items()
                if k in _MAE_ENCODER_PARAMS or k.startswith("blocks_")
            }
            params["pos_embed"] = jnp.asarray(
                sincos_pos_embed_f32(config.embed_dim, config.grid_size)
            )
        elif model.kind == "ecg_classifier":
            params = {k: v for k, v in params.items() if k != "head"}
        encoder = Encoder("ecg", config, {"params": params})
    else:
        subtree = _RESNET_SUBTREE.get(model.kind)
        config = model.config if subtree is None else model.config.encoder
        stats = model.variables["batch_stats"]
        if subtree is not None:
            params, stats = params[subtree], stats[subtree]
        size = image_size or model.image_size or DEFAULT_IMAGE_SIZE
        encoder = Encoder("cmr", config, {"params": params, "batch_stats": stats}, size)
    _check_tree(encoder, model.kind)
    return encoder


def _count(n: int) -> str:
    """``5.4M``, ``12.3k``: a parameter count at a glance."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


# The MAE's encoder half besides its blocks; its pos_embed is the fixed table, added above.
_MAE_ENCODER_PARAMS = ("patch_embed", "cls_token", "norm")


def _vit_config(kind: str, config: Config) -> ViTConfig:
    """The :class:`ViTConfig` of an ECG model's encoder; an MAE's encoder pools its cls token."""
    if kind == "ecg_encoder":
        return config
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    values = {k: v for k, v in config.to_dict().items() if k in fields}
    if kind == "mae":
        # The MAE encoder ends in `norm`; its cls token is the reference's global feature.
        values["global_pool"] = "token"
    return ViTConfig.from_dict(values)


def _check_tree(encoder: Encoder, source_kind: str) -> None:
    """Fail early, naming the leaves, if the cut-down tree does not fit the encoder module."""
    from convert.targets import binding

    abstract = binding(_DEFAULT_MODEL_KIND[encoder.kind]).abstract(encoder.config)
    expected = {
        jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree.leaves_with_path(abstract)
    }
    got = {
        jax.tree_util.keystr(p): tuple(np.shape(v))
        for p, v in jax.tree.leaves_with_path(encoder.params)
    }
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))[:8]
        raise CheckpointError(
            f"the encoder cut from a {source_kind!r} model does not fit "
            f"{type(encoder.module).__name__}({encoder.config}); differing leaves: {diff}"
        )
