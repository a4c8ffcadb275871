"""Device mesh, shardings and multi-process start-up for data-parallel training.

One ``("data",)`` axis over every device of every process (:mod:`jaxecg.devices`,
shared with inference): the batch is split along it. Parameters and optimiser state
are either replicated or, with ``train.param_sharding=fsdp``, split over the same axis
(:func:`state_shardings`; under ``jit`` XLA gathers each weight where it is used and
reduce-scatters its gradient). This module adds what only training needs: joining
processes, the batch-size check, and the layout of a state.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxecg.devices import DATA_AXIS, batch_sharding, make_mesh, replicated, to_host
from jaxecg.errors import ConfigError
from jaxecg.train.config import DistributedConfig

__all__ = [
    "DATA_AXIS",
    "any_process",
    "batch_sharding",
    "bytes_per_device",
    "check_batch_size",
    "fsdp_spec",
    "initialize_distributed",
    "make_mesh",
    "replicate",
    "replicated",
    "state_shardings",
    "to_host",
]

# FSDP leaves tensors below this many elements whole: splitting biases and norms saves
# next to nothing and adds a gather per use.
FSDP_MIN_SIZE = 2**14


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


def fsdp_spec(shape: tuple[int, ...], num_devices: int) -> PartitionSpec:
    """Split the largest axis ``num_devices`` divides; small or indivisible tensors stay whole."""
    divisible = [axis for axis, size in enumerate(shape) if size % num_devices == 0]
    if math.prod(shape) < FSDP_MIN_SIZE or not divisible:
        return PartitionSpec()
    split = max(divisible, key=lambda axis: shape[axis])
    return PartitionSpec(*(DATA_AXIS if axis == split else None for axis in range(len(shape))))


def state_shardings(
    tree: Any, mesh: Mesh, mode: Literal["replicated", "fsdp"] = "replicated"
) -> Any:
    """A ``NamedSharding`` per leaf of ``tree`` (arrays or ``ShapeDtypeStruct``s).

    ``fsdp`` splits each tensor by :func:`fsdp_spec`, so a parameter and its Adam
    moments (same shape) get the same layout; ``replicated`` copies every leaf.
    """
    if mode == "replicated":
        return jax.tree.map(lambda _: replicated(mesh), tree)
    devices = mesh.shape[DATA_AXIS]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, devices)), tree)


def bytes_per_device(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of ``tree`` laid out with ``shardings`` (from shapes alone)."""
    sizes = jax.tree.map(
        lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize,
        tree,
        shardings,
    )
    return sum(jax.tree.leaves(sizes))


def check_batch_size(
    global_batch: int, mesh: Mesh, *, what: str = "train.batch_size", micro_batches: int = 1
) -> int:
    """The per-process batch; errors (before anything compiles) if devices cannot split it,
    or ``micro_batches`` (``train.grad_accum``) micro-batches that the devices split."""
    devices = mesh.devices.size
    if global_batch <= 0 or global_batch % (devices * micro_batches):
        accum = f" times train.grad_accum={micro_batches}" if micro_batches > 1 else ""
        raise ConfigError(
            f"{what}={global_batch} must be a positive multiple of the device count{accum} "
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
