"""A training split held in device memory (``data.on_device=true``), read inside the step.

ECG datasets are small next to an accelerator's memory (PTB-XL is about 5 GB in
float32), while a host loader feeds a few thousand records a second: holding the split
on the devices takes the host out of the step.

- Layout: every record array ``(N, ...)`` is split over the mesh's ``data`` axis along
  its record axis. ``N`` need not divide the device count ``D``: the record axis is
  padded to ``ceil(N / D) * D`` rows with copies of the last record, and no index ever
  points at a padding row (the index stream only holds ``0 .. N - 1``). In a
  multi-process run each process reads and places only its own devices' rows
  (:func:`load_split`); the gather's reduce-scatter spans all processes.
- Order: the loop's loader runs over :class:`~jaxecg.data.IndexSource` with the split's
  record count and the seed, batch and shard settings of the host path, so it yields the
  host path's record order as indices and checkpoints the same position.
- Gather: :func:`gather_rows` runs inside the jitted step (:func:`gathering_step`). Each
  device takes the batch rows it holds (zeros elsewhere) and a reduce-scatter sums them
  into each device's slice of the batch, laid out as a host batch would be. Moving
  ``batch x record`` bytes per step, not the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, PartitionSpec

from jaxecg.data import read_records
from jaxecg.devices import DATA_AXIS, batch_sharding
from jaxecg.errors import ConfigError

Resident = dict[str, jax.Array]
_NOT_CAST = frozenset({"label"})
_CHUNK = 1024  # records read (and cast) at a time while loading a split


def stored_dtype(key: str, dtype: np.dtype, on_device_dtype: str) -> np.dtype:
    """The dtype a record array is held in: floating arrays other than ``label`` in
    ``on_device_dtype``, everything else as it is."""
    if key in _NOT_CAST or not np.issubdtype(dtype, np.floating):
        return np.dtype(dtype)
    return np.dtype(jnp.dtype(on_device_dtype))


def check_fits(bytes_per_device: int, devices: Any, *, what: str, hint: str) -> None:
    """A :class:`ConfigError` with the byte counts (and ``hint``, what to do) when a device
    reports less free memory than ``bytes_per_device``; devices that report none (CPU)
    are not checked."""
    for device in devices:
        stats = device.memory_stats()
        if not stats or "bytes_limit" not in stats:
            continue
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        if bytes_per_device > free:
            raise ConfigError(
                f"data.on_device=true: {what} needs {bytes_per_device:,} bytes on each device, "
                f"but {device} has {free:,} of {stats['bytes_limit']:,} bytes free; {hint}"
            )


def load_split(
    source: Any, mesh: Mesh, *, on_device_dtype: str = "float32", progress: bool = True
) -> Resident:
    """Every record of ``source`` as ``{key: (rows, ...)}`` arrays split over ``mesh``'s
    ``data`` axis (padded as the module says), each process reading its devices' rows.

    The split's size is checked against each device's free memory before anything is
    read (:func:`check_fits`).
    """
    count = len(source)
    devices = mesh.shape[DATA_AXIS]
    per_device = -(-count // devices)
    total = per_device * devices
    first = source[0]
    dtypes = {k: stored_dtype(k, np.asarray(v).dtype, on_device_dtype) for k, v in first.items()}
    shapes = {k: (total, *np.shape(v)) for k, v in first.items()}
    row_bytes = sum(math.prod(shapes[k][1:]) * dtypes[k].itemsize for k in first)
    sharding = batch_sharding(mesh)
    check_fits(
        per_device * row_bytes,
        sharding.addressable_devices,
        what=f"the training split ({count} records of {row_bytes:,} bytes, "
        f"{per_device} per device over {devices} devices)",
        hint=("use " if on_device_dtype == "bfloat16" else "use data.on_device_dtype=bfloat16, ")
        + "more devices, or data.on_device=false",
    )
    # This process's devices and their rows; rows past the last record are its copies
    # (padding, never indexed).
    spans = {
        device: [min(row, count - 1) for row in range(*span.indices(total))]
        for device, (span,) in sharding.addressable_devices_indices_map((total,)).items()
    }
    shards: dict[str, list[jax.Array]] = {key: [] for key in first}
    with tqdm.tqdm(
        total=sum(map(len, spans.values())),
        desc="train split to devices",
        unit="record",
        disable=not progress,
    ) as bar:
        for device, rows in spans.items():
            # Filled in chunks, cast as they come: the host holds one device's rows once.
            block = {key: np.empty((len(rows), *shapes[key][1:]), dtypes[key]) for key in first}
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                for key, value in read_records(source, chunk).items():
                    block[key][start : start + len(chunk)] = value
                bar.update(len(chunk))
            for key, value in block.items():
                shards[key].append(jax.device_put(value, device))
    return {
        key: jax.make_array_from_single_device_arrays(shapes[key], sharding, shards[key])
        for key in first
    }


def gather_rows(resident: Resident, indices: jax.Array, mesh: Mesh) -> dict[str, jax.Array]:
    """``{key: resident[key][indices]}`` as a batch split over ``data`` (call under ``jit``).

    Floating arrays come back as float32 whatever their stored dtype; exact, since each
    row is one device's value plus zeros from the others.
    """
    rows_per_device = next(iter(resident.values())).shape[0] // mesh.shape[DATA_AXIS]

    def local(rows: Resident, wanted: jax.Array) -> Resident:
        offset = wanted - jax.lax.axis_index(DATA_AXIS) * rows_per_device
        mine = (offset >= 0) & (offset < rows_per_device)
        safe = jnp.clip(offset, 0, rows_per_device - 1)
        out = {}
        for key, value in rows.items():
            picked = jnp.take(value, safe, axis=0)
            keep = mine.reshape(-1, *(1,) * (value.ndim - 1))
            picked = jnp.where(keep, picked, jnp.zeros((), value.dtype))
            out[key] = jax.lax.psum_scatter(picked, DATA_AXIS, scatter_dimension=0, tiled=True)
        return out

    gathered = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(DATA_AXIS), PartitionSpec()),
        out_specs=PartitionSpec(DATA_AXIS),
    )(resident, indices)
    return {
        key: value.astype(jnp.float32) if jnp.issubdtype(value.dtype, jnp.floating) else value
        for key, value in gathered.items()
    }


def gathering_step(step: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """``(state, {"index": (B,)}, seed_key, resident) -> step(state, batch, seed_key)``:
    ``step`` (e.g. :func:`~jaxecg.train.loop.make_train_step`'s) fed the gathered rows, to
    be jitted as one program."""

    def wrapped(state: Any, batch: dict[str, jax.Array], seed_key: jax.Array, resident: Resident):
        return step(state, gather_rows(resident, batch["index"], mesh), seed_key)

    return wrapped


def with_resident(step: Callable[..., Any], resident: Resident) -> Callable[..., Any]:
    """The jitted :func:`gathering_step` with the loop's ``(state, batch, seed_key)``
    signature, ``resident`` passed as an argument (never baked in as a constant)."""

    def bound(state: Any, batch: dict[str, jax.Array], seed_key: jax.Array):
        return step(state, batch, seed_key, resident)

    return bound
