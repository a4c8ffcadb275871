"""Throughput of the ECG input pipeline on this host (samples/s).

Measures what a training step waits for: grain loader over preprocessed
``(12, 5000)`` records (global shuffle, batching, host threads) → device put
with a data-parallel sharding (prefetched) → the jitted pretraining
augmentations (crop 2500, FT-surrogate, jitter, rescale) per sample. Also
reports the offline reference preprocessing rate (records/s, one core).

    python benchmarks/bench_ecg_pipeline.py [--records 256] [--batch-size 64] [--steps 30]

(with the package installed, ``pip install -e .``; from a bare checkout prefix
``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxecg.data import (
    ArraySource,
    ECGAugmentConfig,
    ecg_augment_batch,
    make_loader,
    preprocess_ecg,
    synthetic_ecg,
    synthetic_ecg_record,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preprocess-records", type=int, default=4)
    args = parser.parse_args()

    data = synthetic_ecg(args.records, seed=0)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    loader = make_loader(
        ArraySource(data),
        batch_size=args.batch_size,
        seed=0,
        num_epochs=None,
        sharding=sharding,
        num_threads=args.threads,
    )
    cfg = ECGAugmentConfig.preset("pretrain")
    augment = jax.jit(functools.partial(ecg_augment_batch, cfg=cfg, train=True))
    key = jax.random.key(0)

    def step(i: int) -> jax.Array:
        batch = next(loader)
        return augment(jax.random.fold_in(key, i), batch["ecg"])

    step(0).block_until_ready()  # compile and fill the prefetch queue
    start = time.perf_counter()
    for i in range(1, args.steps + 1):
        out = step(i)
    out.block_until_ready()
    elapsed = time.perf_counter() - start
    rate = args.steps * args.batch_size / elapsed

    raws = [synthetic_ecg_record(i, seed=1, raw=True)[0] for i in range(args.preprocess_records)]
    start = time.perf_counter()
    for raw in raws:
        preprocess_ecg(raw)
    pre_rate = len(raws) / (time.perf_counter() - start)

    print(
        f"devices: {len(jax.devices())} x {jax.devices()[0].platform}, batch {args.batch_size}, "
        f"steps {args.steps}, host threads {args.threads}"
    )
    print(f"ECG pipeline (load + shuffle + batch + device put + augment): {rate:.0f} samples/s")
    print(f"offline reference preprocessing (ALS baseline): {pre_rate:.2f} records/s per core")


if __name__ == "__main__":
    main()
