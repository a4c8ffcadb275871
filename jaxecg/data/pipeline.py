"""The input pipeline: grain shuffling, per-process sharding, batching, device prefetch.

``make_loader`` turns any random-access source (``len`` + ``__getitem__`` →
dict of numpy arrays, see :mod:`jaxecg.data.sources`) into an iterator of
per-host batches ``{key: (batch_size, ...)}``. Per epoch it

1. permutes ALL record indices with ``seed`` (grain's index shuffle, reseeded
   every epoch), so the order is global and the same on every host;
2. drops the last ``N mod shard_count`` indices of that permutation so every
   process gets the same number of records (hosts must run equal step counts);
3. gives process ``k`` the positions ``k, k + shard_count, ...`` — shards are
   disjoint and together cover the kept indices;
4. loads each record, checks it against the record layout (a bad record raises
   ``ValueError`` naming it), applies ``transform``, and batches within the
   epoch.

The iterator state (:meth:`Loader.get_state`) is a small JSON-safe dict: save it
with Orbax (``ocp.args.JsonSave(loader.get_state())``) next to the model and
restore with ``loader.set_state(...)`` to continue with exactly the batches an
uninterrupted run would have produced. Each process saves its own state.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

Record = dict[str, np.ndarray]
_STATE_VERSION = 1


def _record_name(source: Any, index: int) -> str:
    name = getattr(source, "record_name", None)
    return name(index) if callable(name) else f"record {index}"


def _layout(record: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(np.shape(v)), np.asarray(v).dtype.kind) for k, v in record.items()}


class _LoadRecord:
    """Load ``source[i]``, check its layout, apply ``transform`` — errors name the record."""

    def __init__(self, source: Any, layout: dict, transform: Callable[[Record], Record] | None):
        self.source, self.layout, self.transform = source, layout, transform

    def __call__(self, index: int) -> Record:
        index = int(index)
        try:
            record = self.source[index]
        except Exception as err:
            raise ValueError(
                f"{_record_name(self.source, index)}: cannot be loaded ({type(err).__name__}: {err})"
            ) from err
        if not isinstance(record, Mapping) or _layout(record) != self.layout:
            got = _layout(record) if isinstance(record, Mapping) else type(record).__name__
            raise ValueError(
                f"{_record_name(self.source, index)}: expected record layout {self.layout} "
                f"(shape, dtype kind), got {got}"
            )
        return dict(self.transform(record)) if self.transform is not None else dict(record)


def read_records(source: Any, rows: Sequence[int]) -> Record:
    """Records ``rows`` of ``source`` stacked per key (``{key: (len(rows), ...)}``).

    Each record is checked against record 0's layout as the loader checks it, so a bad
    record raises ``ValueError`` naming it (used to hold a whole split on the devices).
    """
    load = _LoadRecord(source, _layout(source[0]), None)
    loaded = [load(index) for index in rows]
    if not loaded:
        raise ValueError("read_records needs at least one row")
    return {key: np.stack([record[key] for record in loaded]) for key in loaded[0]}


class Loader:
    """Iterator of per-host batches with a checkpointable position (see module doc).

    Yields ``{key: np.ndarray (batch_size, ...)}``, or global ``jax.Array``s laid
    out with ``sharding`` when one was given (each process contributes its own
    rows, ``jax.make_array_from_process_local_data``), prefetched
    ``device_prefetch`` batches ahead.
    """

    def __init__(
        self,
        dataset: grain.MapDataset,
        *,
        config: dict[str, int | bool | None],
        steps_per_epoch: int,
        sharding: jax.sharding.Sharding | None,
        device_prefetch: int,
        read_options: grain.ReadOptions,
    ):
        self._dataset = dataset
        self._config = config
        self.steps_per_epoch = steps_per_epoch
        self._sharding = sharding
        self._device_prefetch = max(1, device_prefetch) if sharding is not None else 0
        self._iterator = dataset.to_iter_dataset(read_options).__iter__()
        self._queue: collections.deque[tuple[Any, Any]] = collections.deque()

    @property
    def batch_size(self) -> int:
        """Per-host batch size."""
        return int(self._config["batch_size"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def _to_device(self, batch: Record) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_process_local_data(self._sharding, np.asarray(v))
            for k, v in batch.items()
        }

    def _fill(self) -> None:
        while len(self._queue) < self._device_prefetch:
            state = self._iterator.get_state()
            try:
                batch = next(self._iterator)
            except StopIteration:
                return
            self._queue.append((state, self._to_device(batch)))

    def __next__(self) -> dict[str, Any]:
        if self._sharding is None:
            return next(self._iterator)
        self._fill()
        if not self._queue:
            raise StopIteration
        _, batch = self._queue.popleft()
        self._fill()
        return batch

    def get_state(self) -> dict[str, Any]:
        """JSON-safe position: the next batch this loader will yield, plus its configuration."""
        inner = self._queue[0][0] if self._queue else self._iterator.get_state()
        return {"version": _STATE_VERSION, "iterator": inner, **self._config}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resume at a position from :meth:`get_state` of a loader with the same configuration."""
        if state.get("version") != _STATE_VERSION or "iterator" not in state:
            raise ValueError(f"not a jaxecg loader state (version {_STATE_VERSION}): {dict(state)}")
        differing = {k: (state.get(k), v) for k, v in self._config.items() if state.get(k) != v}
        if differing:
            raise ValueError(
                "loader state was saved with a different configuration "
                f"(key: (saved, this loader)): {differing}"
            )
        self._queue.clear()
        self._iterator.set_state(state["iterator"])


def make_loader(
    source: Any,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    shard_index: int | None = None,
    shard_count: int | None = None,
    transform: Callable[[Record], Record] | None = None,
    drop_remainder: bool = True,
    sharding: jax.sharding.Sharding | None = None,
    device_prefetch: int = 2,
    num_threads: int = 2,
    prefetch_batches: int = 4,
) -> Loader:
    """A :class:`Loader` over ``source`` (``len`` + ``source[i] -> dict`` of arrays).

    ``batch_size`` is the per-host batch; ``num_epochs=None`` repeats forever
    (each epoch reshuffled with ``seed``); ``shard_index``/``shard_count``
    default to ``jax.process_index()``/``jax.process_count()``. ``transform``
    maps one record dict to another on the host (deterministic work such as
    selecting leads; random augmentations belong on device, see
    ``ecg_augment_batch``). Every record must have record 0's layout (keys,
    shapes, dtype kinds); a record that does not raises ``ValueError`` naming it.
    ``drop_remainder=False`` keeps a smaller last batch per epoch (evaluation).
    """
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    num_records = len(source)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_epochs is not None and num_epochs <= 0:
        raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
    per_shard = num_records // shard_count
    if per_shard == 0 or (drop_remainder and per_shard < batch_size):
        raise ValueError(
            f"{num_records} records split over {shard_count} process(es) give {per_shard} "
            f"per process, fewer than one batch of {batch_size}"
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    layout = _layout(source[0])

    indices = grain.MapDataset.range(num_records)
    if shuffle:
        indices = indices.shuffle(seed)
    # Equal shards: drop the permutation's tail, then stride (epochs pass through slices).
    indices = indices[: per_shard * shard_count][shard_index::shard_count]
    records = indices.map(_LoadRecord(source, layout, transform))
    batches = records.batch(batch_size, drop_remainder=drop_remainder)
    steps_per_epoch = len(batches)
    batches = batches.repeat(num_epochs)
    config = {
        "num_records": num_records,
        "batch_size": batch_size,
        "seed": seed,
        "shuffle": shuffle,
        "shard_index": shard_index,
        "shard_count": shard_count,
        "drop_remainder": drop_remainder,
    }
    return Loader(
        batches,
        config=config,
        steps_per_epoch=steps_per_epoch,
        sharding=sharding,
        device_prefetch=device_prefetch,
        read_options=grain.ReadOptions(
            num_threads=num_threads, prefetch_buffer_size=prefetch_batches
        ),
    )
