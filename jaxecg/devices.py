"""The inference-level device mesh: one ``("data",)`` axis over every device of every process.

Embedding, evaluation and training all split the batch along it and replicate the
parameters; this module is what they share, so using a model needs no training stack.
The axis type is ``Auto`` because the default Explicit axes make reshapes inside the
sharded MAE step raise ``ShardingTypeError`` (docs/reference.md#toolchain).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D ``("data",)`` mesh over all devices of all processes."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Same full copy on every device (parameters, optimiser state, step)."""
    return NamedSharding(mesh, PartitionSpec())


def to_host(x: jax.Array) -> np.ndarray:
    """A global array (possibly spread over processes) as one numpy array on every host."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def from_host(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array that every process holds whole, as a global array laid out with
    ``sharding`` (each process places only the shards on its own devices)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def sync_processes(name: str) -> None:
    """Wait until every process has reached the point called ``name`` (one process: no-op)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
