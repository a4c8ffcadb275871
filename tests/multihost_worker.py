"""One process of the two-process test (``test_train_parallel.py``), started with
``--xla_force_host_platform_device_count=2``: ``python multihost_worker.py OUT CONFIG
[key=value ...]``, the overrides including ``distributed.*``.

It trains through :func:`jaxecg.train.loop.train` while recording the synthetic records
(their indices) this process feeds at each step, writes them to ``OUT/fed<i>.json``, then
embeds a tiny dataset into ``OUT/embed`` with :func:`jaxecg.embed.embed`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

from jaxecg.embed import embed, open_data
from jaxecg.encoders import load_encoder
from jaxecg.train import loop
from jaxecg.train.config import load_config

EMBED_ENCODER = {"img_size": [1, 12, 500], "embed_dim": 32, "depth": 1, "num_heads": 2}


def local_rows(x: jax.Array) -> np.ndarray:
    """The rows of a batch-sharded global array that this process's devices hold, in order
    (one block per device: the batch axis is split, nothing is replicated)."""
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    return np.concatenate([np.asarray(s.data) for s in shards])


class _Recording:
    """The run's train iterator, noting the record index of each local row it yields."""

    def __init__(self, inner, index_of: dict[bytes, int], fed: list[list[int]]) -> None:
        self._inner, self._index_of, self._fed = inner, index_of, fed

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._inner)
        self._fed.append([self._index_of[row.tobytes()] for row in local_rows(batch["ecg"])])
        return batch

    def __getattr__(self, name):
        return getattr(self._inner, name)


def main(out: Path, config: str, overrides: list[str]) -> None:
    fed: list[list[int]] = []
    setup = loop.setup

    def recording_setup(cfg, **kwargs):
        run = setup(cfg, **kwargs)
        train_set, _ = run.task.datasets()
        index_of = {train_set[i]["ecg"].tobytes(): i for i in range(len(train_set))}
        run.train_iter = _Recording(run.train_iter, index_of, fed)
        return run

    loop.setup = recording_setup
    loop.train(load_config(config, overrides))
    (out / f"fed{jax.process_index()}.json").write_text(json.dumps(fed))
    encoder = load_encoder("pluto", kind="ecg", seed=5, **EMBED_ENCODER)
    records = open_data("synthetic-ecg", num_records=10)
    embed(encoder, records, out / "embed", batch_size=4, chunk_size=4, progress=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
