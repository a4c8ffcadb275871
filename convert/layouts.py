"""Tensor layouts between torch state dicts and Flax variable trees.

An :class:`Entry` ties one torch key to the Flax leaf (or leaves) it fills and the
:class:`Layout` that converts between them:

- ``LINEAR``: Linear weight ``(out, in)`` ↔ Dense kernel ``(in, out)``.
- ``CONV``: Conv2d weight ``OIHW`` ↔ kernel ``HWIO`` (also the ``(1, 100)`` patch kernel).
- ``MHA_WEIGHT``/``MHA_BIAS``: ``nn.MultiheadAttention.in_proj_weight (3E, E)``/``in_proj_bias
  (3E,)`` ↔ ``q_proj``, ``k_proj``, ``v_proj`` kernels/biases (rows ``[0:E]`` = q, ``[E:2E]`` = k,
  ``[2E:3E]`` = v).
- ``IDENTITY``: LayerNorm/BatchNorm weight ↔ ``scale``, biases, BatchNorm running stats ↔
  ``batch_stats`` ``mean``/``var``, raw tensors (``cls_token``, ``pos_embed``).

Entries are derived from the model's abstract variables (``jax.eval_shape`` of its
``init``), so every Flax leaf is accounted for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from convert.names import Mount, torch_module_name

Path = tuple[str, ...]
Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Converts one torch array to the Flax leaves of an entry and back."""

    name: str
    to_flax: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_torch: Callable[[tuple[np.ndarray, ...]], np.ndarray]
    torch_shape: Callable[[tuple[Shape, ...]], Shape]


def _split3(array: np.ndarray) -> tuple[np.ndarray, ...]:
    if array.shape[0] % 3:
        raise ValueError(f"in_proj tensor of shape {array.shape} does not split into q, k, v")
    return tuple(np.split(array, 3, axis=0))


IDENTITY = Layout("identity", lambda a: (a,), lambda f: f[0], lambda s: s[0])
LINEAR = Layout("linear", lambda a: (a.T,), lambda f: f[0].T, lambda s: s[0][::-1])
CONV = Layout(
    "conv",
    lambda a: (a.transpose(2, 3, 1, 0),),  # OIHW -> HWIO
    lambda f: f[0].transpose(3, 2, 0, 1),  # HWIO -> OIHW
    lambda s: (s[0][3], s[0][2], s[0][0], s[0][1]),
)
MHA_WEIGHT = Layout(
    "mha_in_proj_weight",
    lambda a: tuple(part.T for part in _split3(a)),
    lambda f: np.concatenate([k.T for k in f], axis=0),
    lambda s: (sum(shape[1] for shape in s), s[0][0]),
)
MHA_BIAS = Layout(
    "mha_in_proj_bias",
    _split3,
    lambda f: np.concatenate(f, axis=0),
    lambda s: (sum(shape[0] for shape in s),),
)

_MHA_PARTS = ("q_proj", "k_proj", "v_proj")
_BATCH_STATS = {"mean": "running_mean", "var": "running_var"}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One torch key ↔ the Flax leaves ``paths`` (``(collection, *modules, leaf)``)."""

    torch_key: str
    torch_shape: Shape
    paths: tuple[Path, ...]
    layout: Layout

    def to_flax(self, array: np.ndarray, dtypes: tuple[Any, ...]) -> dict[Path, np.ndarray]:
        leaves = self.layout.to_flax(np.asarray(array))
        return {p: np.ascontiguousarray(v, dtype=d) for p, v, d in zip(self.paths, leaves, dtypes)}

    def to_torch(self, leaves: Mapping[Path, Any]) -> np.ndarray:
        return np.ascontiguousarray(
            self.layout.to_torch(tuple(np.asarray(leaves[p]) for p in self.paths))
        )


def _param_entry(
    mounts: tuple[Mount, ...], modules: Path, leaf: str, shape: Shape
) -> tuple[str, Layout]:
    module = torch_module_name(mounts, modules)
    prefix = f"{module}." if module else ""
    if leaf == "kernel":
        layouts = {2: LINEAR, 4: CONV}
        if len(shape) not in layouts:
            raise ValueError(
                f"kernel {'/'.join(modules)} has shape {shape}; "
                "expected a 2-D Dense or 4-D Conv kernel"
            )
        return prefix + "weight", layouts[len(shape)]
    if leaf == "scale":
        return prefix + "weight", IDENTITY
    return prefix + leaf, IDENTITY


def build_entries(abstract: Mapping[str, Any], mounts: tuple[Mount, ...]) -> list[Entry]:
    """One entry per torch key covering every leaf of ``abstract``.

    ``abstract`` is ``{"params": ..., "batch_stats": ...}`` of arrays or
    ``jax.ShapeDtypeStruct``; a leaf with no torch counterpart is an error.
    """
    flat = traverse_util.flatten_dict(abstract)
    entries: list[Entry] = []
    mha: dict[tuple[str, Layout], dict[str, tuple[Path, Shape]]] = {}
    for path, leaf in flat.items():
        collection, *modules, name = path
        shape = tuple(leaf.shape)
        if (
            collection == "params"
            and modules
            and modules[-1] in _MHA_PARTS
            and name in ("kernel", "bias")
        ):
            base = torch_module_name(mounts, tuple(modules[:-1]))
            key = f"{base}.in_proj_weight" if name == "kernel" else f"{base}.in_proj_bias"
            layout = MHA_WEIGHT if name == "kernel" else MHA_BIAS
            mha.setdefault((key, layout), {})[modules[-1]] = (path, shape)
            continue
        if collection == "params":
            key, layout = _param_entry(mounts, tuple(modules), name, shape)
        elif collection == "batch_stats" and name in _BATCH_STATS:
            module = torch_module_name(mounts, tuple(modules))
            key, layout = f"{module}.{_BATCH_STATS[name]}", IDENTITY
        else:
            raise ValueError(f"no torch counterpart for the Flax leaf {'/'.join(path)!r}")
        entries.append(Entry(key, layout.torch_shape((shape,)), (path,), layout))
    for (key, layout), parts in mha.items():
        if set(parts) != set(_MHA_PARTS):
            raise ValueError(
                f"{key}: attention pool needs q_proj, k_proj and v_proj, got {sorted(parts)}"
            )
        paths = tuple(parts[p][0] for p in _MHA_PARTS)
        shapes = tuple(parts[p][1] for p in _MHA_PARTS)
        entries.append(Entry(key, layout.torch_shape(shapes), paths, layout))
    keys = [e.torch_key for e in entries]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"several Flax leaves map to the same torch key(s): {dupes}")
    return entries
