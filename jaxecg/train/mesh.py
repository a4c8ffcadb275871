"""Device mesh, shardings and multi-process start-up for data-parallel training.

One ``("data",)`` axis over every device of every process: the batch is split
along it, parameters and optimiser state are replicated. The axis type is
``Auto`` because the default Explicit axes make reshapes inside the sharded MAE
step raise ``ShardingTypeError`` (docs/reference.md#toolchain).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxecg.train.config import DistributedConfig

DATA_AXIS = "data"


def initialize_distributed(cfg: DistributedConfig) -> None:
    """Join a multi-process run when a coordinator is configured; no-op for one process."""
    if cfg.coordinator_address is None:
        if cfg.num_processes != 1:
            raise ValueError(
                f"distributed.num_processes={cfg.num_processes} needs "
                "distributed.coordinator_address (host:port)"
            )
        return
    if not 0 <= cfg.process_id < cfg.num_processes:
        raise ValueError(
            f"distributed.process_id must be in [0, {cfg.num_processes}); got {cfg.process_id}"
        )
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
        local_device_ids=list(cfg.local_device_ids) if cfg.local_device_ids else None,
    )


def make_mesh() -> Mesh:
    """A 1-D ``("data",)`` mesh over all devices of all processes."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Same full copy on every device (parameters, optimiser state, step)."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch: int, mesh: Mesh, *, what: str = "train.batch_size") -> int:
    """The per-process batch; errors (before anything compiles) if devices cannot split it."""
    devices = mesh.devices.size
    if global_batch <= 0 or global_batch % devices:
        raise ValueError(
            f"{what}={global_batch} must be a positive multiple of the device count "
            f"({devices} devices over {jax.process_count()} process(es))"
        )
    return global_batch // jax.process_count()


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a host/device pytree fully replicated on the mesh."""
    return jax.device_put(tree, replicated(mesh))


def to_host(x: jax.Array) -> np.ndarray:
    """A global array (possibly spread over processes) as one numpy array on every host."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
