"""Device mesh, shardings and multi-process start-up for data-parallel training.

One ``("data",)`` axis over every device of every process (:mod:`jaxecg.devices`,
shared with inference): the batch is split along it, parameters and optimiser state
are replicated. This module adds what only training needs: joining processes, the
batch-size check and replication of a state.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxecg.devices import DATA_AXIS, batch_sharding, make_mesh, replicated, to_host
from jaxecg.errors import ConfigError
from jaxecg.train.config import DistributedConfig

__all__ = [
    "DATA_AXIS",
    "any_process",
    "batch_sharding",
    "check_batch_size",
    "initialize_distributed",
    "make_mesh",
    "replicate",
    "replicated",
    "to_host",
]


def initialize_distributed(cfg: DistributedConfig) -> None:
    """Join a multi-process run when a coordinator is configured; no-op for one process."""
    if cfg.coordinator_address is None:
        if cfg.num_processes != 1:
            raise ConfigError(
                f"distributed.num_processes={cfg.num_processes} needs "
                "distributed.coordinator_address (host:port)"
            )
        return
    if not 0 <= cfg.process_id < cfg.num_processes:
        raise ConfigError(
            f"distributed.process_id must be in [0, {cfg.num_processes}); got {cfg.process_id}"
        )
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
        local_device_ids=list(cfg.local_device_ids) if cfg.local_device_ids else None,
    )


def check_batch_size(global_batch: int, mesh: Mesh, *, what: str = "train.batch_size") -> int:
    """The per-process batch; errors (before anything compiles) if devices cannot split it."""
    devices = mesh.devices.size
    if global_batch <= 0 or global_batch % devices:
        raise ConfigError(
            f"{what}={global_batch} must be a positive multiple of the device count "
            f"({devices} devices over {jax.process_count()} process(es))"
        )
    return global_batch // jax.process_count()


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a host/device pytree fully replicated on the mesh."""
    return jax.device_put(tree, replicated(mesh))


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process: every process must stop at the same step (a
    signal reaches each at a different moment), else the collective save would hang."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
