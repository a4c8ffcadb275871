"""``convert.load``: a PyTorch checkpoint → Flax variables for one model kind, plus a report.

Steps: read the file inertly (:mod:`convert.reading`), unwrap the state dict,
list the torch names and shapes of every leaf of the model's abstract tree
(:mod:`convert.targets`), match them with the kind's rule (:mod:`convert.rules`),
validate as the reference does (:mod:`convert.report`), then convert each matched
tensor with its layout. Leaves the file does not supply keep a fresh
initialisation and are listed in the report, so no leaf is ever left unset.

Where this differs from the reference's ``PretrainedWeightsMixin`` (whose decisions
on its own key sets the rules reproduce exactly, see ``tests/test_convert_rules.py``):

- Files torch >= 2.6 refuses under ``weights_only=True`` (Lightning/``argparse``
  objects) are read inertly instead of failing: we always decide like the
  reference under torch 2.4 (``weights_only=False``), without running any code.
- Targets are our modules' leaves plus the reference's keys that our modules do not
  hold but its loading counts (fixed tables, the constructor-time ``norm``, a trained
  classifier's ``criterion.*`` buffers when restoring): no never-loaded timm ``head`` on
  the ECG encoder and no ``num_batches_tracked`` (ignored in the file too).
- Targets outside a rule's validated set are still filled when the file has them
  with the right shape (the MAE decoder; an ECG classifier's ``fc_norm`` and
  ``attention_pool``), listed as ``extra_loaded``; the reference would drop them.
- MAE ``pos_embed``/``decoder_pos_embed`` count like the reference's keys but are
  never loaded: our MAE recomputes them, and the report notes whether the file's
  copy equals our table.
- A DDP ``module.`` prefix is accepted (see :mod:`convert.rules`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from convert.layouts import Entry
from convert.reading import read_checkpoint, to_numpy
from convert.report import LoadReport, validate
from convert.rules import RULES, Mode, Rule, tensors_of, unwrap
from convert.targets import binding
from jaxecg.config import Config
from jaxecg.errors import CheckpointError

log = logging.getLogger("convert")

# Our fixed sin-cos tables equal the reference's float32 cast exactly; allow rounding only.
_TABLE_ATOL = 1e-6
_LEARNED_POS_EMBED = "pos_embed"


def _state_dict(
    source: str | Path | Mapping[str, Any],
) -> tuple[dict[str, np.ndarray], str, str | None]:
    """``(tensors, source name, sha256 of the file)`` for a path or an in-memory checkpoint."""
    if isinstance(source, Mapping):
        return tensors_of(unwrap(to_numpy(source))), "<state dict>", None
    path = Path(source)
    checkpoint = read_checkpoint(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return tensors_of(unwrap(checkpoint)), str(path), digest


def strip_key_prefix(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """``state`` with ``prefix`` removed from the keys that have it (the others are kept)."""
    stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not stripped:
        raise CheckpointError(f"strip_prefix={prefix!r}: no key of the checkpoint starts with it")
    kept = {k: v for k, v in state.items() if not k.startswith(prefix)}
    clashes = sorted(set(stripped) & set(kept))
    if clashes:
        raise CheckpointError(
            f"strip_prefix={prefix!r}: the file also holds {clashes[:5]} without the prefix"
        )
    return {**kept, **stripped}


def _resize_pos_embed(array: np.ndarray, shape: tuple[int, ...], config: Any) -> np.ndarray:
    from jaxecg.models.pos_embed import interpolate_pos_embed

    resized = np.asarray(interpolate_pos_embed(array, config.grid_size))
    if resized.shape != shape:
        raise CheckpointError(
            f"cannot resize pos_embed {array.shape} to the model's {shape} "
            f"(grid {config.grid_size})"
        )
    return resized


def _check_table(key: str, array: np.ndarray, table: np.ndarray, source: str) -> list[str]:
    """Notes on a checkpoint's copy of a table the model recomputes (it is never loaded)."""
    if array.shape != table.shape:
        return [f"{key}: fixed sin-cos table recomputed for the model's shape {table.shape}"]
    if np.allclose(array, table, rtol=0.0, atol=_TABLE_ATOL):
        return [f"{key}: equals our fixed sin-cos table (recomputed from the config, not loaded)"]
    diff = float(np.max(np.abs(array.astype(np.float64) - table)))
    log.warning("%s in %s differs from our fixed sin-cos table by up to %.3g", key, source, diff)
    return [f"{key}: differs from our fixed sin-cos table (max {diff:.3g}); ours is used"]


class _Plan(NamedTuple):
    """A validated match of a checkpoint against a model: what :func:`load` converts."""

    report: LoadReport
    state: dict[str, np.ndarray]
    sources: dict[str, str]
    entries: list[Entry]
    abstract: dict[str, Any]
    tables: dict[str, np.ndarray]
    config: Config


def check(
    source: str | Path | Mapping[str, Any],
    kind: str,
    config: Config | Mapping[str, Any] | None = None,
    **options: Any,
) -> LoadReport:
    """The report :func:`load` would give (raising where it would), converting nothing.

    Takes :func:`load`'s keyword options; e.g. ``check(path, "ecg_classifier", cfg,
    mode="restore")`` tells whether ``path`` holds a trained classifier for ``cfg``.
    """
    return _plan(source, kind, config, **options).report


def _plan(
    source: str | Path | Mapping[str, Any],
    kind: str,
    config: Config | Mapping[str, Any] | None = None,
    *,
    strict: bool = False,
    missing_key_threshold: float = 0.1,
    resize_pos_embed: bool = False,
    strip_prefix: str | None = None,
    mode: Mode = "finetune",
    criterion_buffers: Mapping[str, Any] | None = None,
    rule: Rule | None = None,
) -> _Plan:
    target = binding(kind)
    rule = rule if rule is not None else RULES[kind].for_mode(mode)
    config = target.config(config)
    state, source_name, digest = _state_dict(source)
    if strip_prefix:
        state = strip_key_prefix(state, strip_prefix)

    entries, abstract = target.entries(config)
    tables = target.fixed_tables(config)
    buffers: dict[str, np.ndarray] = {}
    if mode == "restore":
        buffers = {**target.criterion(config)}
        buffers.update({k: np.asarray(v) for k, v in (criterion_buffers or {}).items()})
    # The reference's keys our module does not hold count as it counts them (those its
    # rule validates; the others are "unexpected" in a file, as there), never loaded.
    reference_only = {k: v.shape for k, v in {**tables, **buffers}.items()}
    if mode == "finetune":
        reference_only.update(target.constructor_only(config))
    reference_only = {k: v for k, v in reference_only.items() if rule.validates(k)}
    targets = {e.torch_key: e.torch_shape for e in entries}
    targets.update(reference_only)
    learned = {e.torch_key for e in entries}
    resizable: set[str] = set()
    if resize_pos_embed:
        resizable = ({_LEARNED_POS_EMBED} & learned) | (set(tables) & set(reference_only))
    found = rule.match(
        targets, state, ignore_source=True, resizable=resizable, fill_unvalidated=True
    )

    sources = {**found.matched, **found.extra}
    unfilled = [e.torch_key for e in entries if e.torch_key not in sources]
    report = found.report(
        source=source_name,
        kind=kind,
        initialised=tuple(sorted(unfilled)),
        source_sha256=digest,
    )
    validate(report, strict=strict, missing_key_threshold=missing_key_threshold)
    notes: list[str] = []
    for key, table in tables.items():
        # Checked whether or not the rule counts it (decoder_pos_embed stays "unexpected").
        name = sources.get(key) or next((c for c in rule.candidates(key) if c in state), None)
        if name is not None:
            notes.extend(_check_table(key, state[name], table, source_name))
    for key, buffer in buffers.items():
        if key in sources and not np.array_equal(state[sources[key]], buffer):
            notes.append(f"{key}: the file's loss buffer differs from the given one (not loaded)")
    report = dataclasses.replace(report, notes=tuple(notes))
    return _Plan(report, state, sources, entries, abstract, tables, config)


def load(
    source: str | Path | Mapping[str, Any],
    kind: str,
    config: Config | Mapping[str, Any] | None = None,
    *,
    strict: bool = False,
    missing_key_threshold: float = 0.1,
    resize_pos_embed: bool = False,
    strip_prefix: str | None = None,
    mode: Mode = "finetune",
    criterion_buffers: Mapping[str, Any] | None = None,
    rule: Rule | None = None,
) -> tuple[dict[str, Any], LoadReport]:
    """Convert a checkpoint into ``{"params": ..., "batch_stats": ...}`` for ``Module(config)``.

    ``source``: a ``.pth``/``.pt``/``.ckpt``/``.safetensors``/``.npz`` file (optionally
    ``.xz``) or an in-memory (nested) state dict. ``kind``: one of
    :data:`convert.targets.KINDS`. ``config``: the model config (or its dict; ``None`` →
    the config class's defaults). ``resize_pos_embed``: accept a learned ``pos_embed`` of
    another time length and resize it (bicubic along time, as the reference's
    ``interpolate_pos_embed``). ``strip_prefix``: remove this prefix from the file's keys
    first (e.g. ``"model."`` for a Lightning module holding the model as ``self.model``;
    the failure report names it when most missing keys sit under one prefix).
    ``mode`` (classifiers; the other kinds load one way): ``"finetune"`` decides like the
    reference initialising a classifier to fine-tune, loading while it is constructed (an
    encoder or MAE file passes; head and pooling keep their initialisation when the file
    lacks them); ``"restore"`` like the reference restoring a trained classifier, every
    module present (head, pooling, and its loss buffers: ``criterion.weight`` from
    ``class_weights``, or ``criterion_buffers`` such as ``{"criterion.pos_weight": w}``
    for an ECG classifier trained with one), so a bare encoder file is refused. Use
    ``"restore"`` wherever a trained classifier is evaluated or exported.
    ``rule``: replaces the kind's default :class:`Rule` (``mode`` is then the rule's).

    Raises :class:`~convert.report.CheckpointMismatchError` (shape mismatches, too many
    or — with ``strict`` — any missing keys) and
    :class:`~convert.reading.CheckpointReadError` (unreadable file).
    """
    plan = _plan(
        source,
        kind,
        config,
        strict=strict,
        missing_key_threshold=missing_key_threshold,
        resize_pos_embed=resize_pos_embed,
        strip_prefix=strip_prefix,
        mode=mode,
        criterion_buffers=criterion_buffers,
        rule=rule,
    )
    config, state, sources, report = plan.config, plan.state, plan.sources, plan.report
    flat_abstract = traverse_util.flatten_dict(plan.abstract)
    flat: dict[tuple[str, ...], Any] = {}
    notes = list(report.notes)
    for entry in plan.entries:
        if entry.torch_key not in sources:
            continue
        array = state[sources[entry.torch_key]]
        if array.shape != entry.torch_shape:
            resized = _resize_pos_embed(array, entry.torch_shape, config)
            notes.append(f"{entry.torch_key} resized from {array.shape} to {resized.shape}")
            array = resized
        dtypes = tuple(flat_abstract[p].dtype for p in entry.paths)
        flat.update(entry.to_flax(array, dtypes))
    missing_paths = [p for e in plan.entries if e.torch_key not in sources for p in e.paths]
    if missing_paths:
        fresh = traverse_util.flatten_dict(binding(kind).init(config))
        flat.update({p: fresh[p] for p in missing_paths})
    variables = traverse_util.unflatten_dict({p: jnp.asarray(v) for p, v in flat.items()})
    return variables, dataclasses.replace(report, notes=tuple(notes))
