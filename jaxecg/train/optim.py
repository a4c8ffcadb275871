"""optax optimisers of the four tasks, with the reference's parameter groups.

The reference builds torch param groups; here the same decisions are pytrees
over the Flax parameter tree (whose paths mirror the torch names, see the
project's naming convention):

- :func:`mae_decay_mask`: timm ``add_weight_decay`` (MAE pretraining) — no decay
  for 1-D tensors and biases; ``cls_token``/``mask_token`` *are* decayed.
- :func:`vit_decay_mask` and :func:`vit_layer_scales`: oetu/mae
  ``param_groups_lrd`` (ECG fine-tuning) — no decay for 1-D tensors,
  ``pos_embed``, ``cls_token``; lr scale ``layer_decay ** (L - layer_id)``.
- :func:`adam_l2`: torch ``Adam(weight_decay=...)``, i.e. L2 added to the
  gradient before the moments (SimCLR, CMR fine-tuning).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxecg.config import ConfigError
from jaxecg.train.config import OptimConfig
from jaxecg.train.schedules import cosine, schedule_steps, warmup_cosine

PyTree = Any

_BLOCK = re.compile(r"^blocks_(\d+)$")
# oetu/mae ECGClassifier.no_weight_decay(): these never decay, whatever their rank.
_VIT_NO_DECAY = frozenset({"pos_embed", "cls_token", "dist_token"})


def path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """A ``tree_map_with_path`` key path as plain strings (``('blocks_0', 'attn', ...)``)."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def make_schedule(
    optim: OptimConfig, *, steps_per_epoch: int, total_steps: int | None
) -> tuple[optax.Schedule, int]:
    """``(schedule, total_steps)`` for ``optim`` with epochs converted to real steps."""
    warmup, max_steps = schedule_steps(
        warmup_epochs=optim.warmup_epochs,
        epochs=optim.epochs,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )
    if optim.schedule == "warmup_cosine":
        if warmup == 0 and optim.warmup_start_lr == optim.min_lr:
            raise ConfigError(
                "optim.warmup_epochs=0 with optim.schedule=warmup_cosine: lightning-bolts' "
                f"schedule would stay at warmup_start_lr={optim.warmup_start_lr} for the whole "
                "run; give a warmup or use optim.schedule=cosine"
            )
        schedule = warmup_cosine(optim.lr, warmup, max_steps, optim.min_lr, optim.warmup_start_lr)
        return schedule, max_steps
    if optim.schedule == "cosine":
        return cosine(optim.lr, max_steps, optim.min_lr), max_steps
    return optax.constant_schedule(optim.lr), max_steps


def vit_layer_id(names: tuple[str, ...], num_layers: int) -> int:
    """timm ``get_layer_id_for_vit``: 0 embeddings, ``i + 1`` for ``blocks_i``, else ``num_layers``."""
    for name in names:
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            return 0
        match = _BLOCK.match(name)
        if match:
            return int(match.group(1)) + 1
    return num_layers


def vit_layer_scales(params: PyTree, *, depth: int, layer_decay: float) -> PyTree:
    """Per-leaf lr scale ``layer_decay ** (depth + 1 - id)`` (docs/reference.md#layer-decay)."""
    num_layers = depth + 1
    return jax.tree_util.tree_map_with_path(
        lambda p, _: layer_decay ** (num_layers - vit_layer_id(path_names(p), num_layers)), params
    )


def vit_decay_mask(params: PyTree) -> PyTree:
    """``param_groups_lrd``: decay unless 1-D or named ``pos_embed``/``cls_token``/``dist_token``."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x.ndim > 1 and path_names(p)[-1] not in _VIT_NO_DECAY, params
    )


def mae_decay_mask(params: PyTree) -> PyTree:
    """timm ``add_weight_decay``: decay unless 1-D or a bias (tokens of rank 3 ARE decayed)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x.ndim > 1 and path_names(p)[-1] != "bias", params
    )


def _scale_per_leaf(scales: PyTree) -> optax.GradientTransformation:
    """Multiply each update leaf by a fixed factor (per-layer lr scaling)."""
    return optax.stateless(lambda updates, params: jax.tree.map(jnp.multiply, updates, scales))


def adamw(
    schedule: optax.Schedule,
    optim: OptimConfig,
    *,
    decay_mask: PyTree,
    lr_scales: PyTree | None = None,
) -> optax.GradientTransformation:
    """torch ``AdamW`` over param groups: decoupled decay on ``decay_mask``, per-leaf lr scale.

    Per leaf the update is ``-lr(t) * scale * (adam + wd * p)``, which is torch's
    ``p *= 1 - lr*wd`` followed by its Adam step with the group's scaled lr.
    """
    parts = [
        optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
        optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(schedule),
    ]
    if lr_scales is not None:
        parts.append(_scale_per_leaf(lr_scales))
    return optax.chain(*parts)


def adam_l2(schedule: optax.Schedule, optim: OptimConfig) -> optax.GradientTransformation:
    """torch ``Adam(weight_decay=wd)``: ``g + wd * p`` enters the moments (L2, not decoupled)."""
    return optax.chain(
        optax.add_decayed_weights(optim.weight_decay),
        optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
        optax.scale_by_learning_rate(schedule),
    )


def freeze(
    tx: optax.GradientTransformation, params: PyTree, is_frozen: Callable[[tuple[str, ...]], bool]
) -> optax.GradientTransformation:
    """``tx`` on trainable leaves, zero updates (and no optimiser state) on frozen ones."""
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if is_frozen(path_names(p)) else "train", params
    )
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
