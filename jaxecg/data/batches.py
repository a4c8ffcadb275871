"""Every record once, in whole global batches: the last one padded and masked.

Evaluation must score every record of a split, but compiled steps want one batch
shape. :func:`padded_batches` pads the last batch with copies of the split's last
record and yields a mask of the real rows; :func:`valid_rows` drops the copies from
what a step returned. Training validation and ``jaxecg evaluate`` share both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jaxecg.errors import UsageError


def padded_batches(
    records: Any,
    global_batch: int,
    *,
    sharding: jax.sharding.Sharding | None = None,
    max_batches: int | None = None,
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """``(batch, valid)`` pairs over ``records`` in order; ``valid`` is ``(global_batch,)`` bool.

    ``records``: ``len`` + ``[i] -> dict of arrays``. With ``sharding`` each process
    loads only its rows of every global batch and the arrays are assembled across
    processes; without it the batch is host numpy. ``max_batches`` caps the pass.
    """
    count = len(records)
    processes, index = jax.process_count(), jax.process_index()
    if global_batch <= 0 or global_batch % processes:
        raise UsageError(f"global batch {global_batch} must be a positive multiple of {processes}")
    local = global_batch // processes
    num_batches = -(-count // global_batch)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    for start in range(0, num_batches * global_batch, global_batch):
        valid = np.arange(start, start + global_batch) < count
        rows = [
            min(i, count - 1) for i in range(start + index * local, start + (index + 1) * local)
        ]
        loaded = [records[i] for i in rows]
        batch = {key: np.stack([r[key] for r in loaded]) for key in loaded[0]}
        if sharding is not None:
            batch = {
                key: jax.make_array_from_process_local_data(sharding, value)
                for key, value in batch.items()
            }
        yield batch, valid


def valid_rows(value: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A step output without the padding rows.

    Per-example outputs (leading axis = the batch) keep their real rows; a per-batch
    value (leading axis 1, e.g. a batch-mean loss) is repeated once per real record, so
    a mean over the concatenated outputs weighs each batch by its records.
    """
    value = np.asarray(value)
    if value.shape[:1] == valid.shape:
        return value[valid]
    return np.repeat(value, int(valid.sum()), axis=0)
