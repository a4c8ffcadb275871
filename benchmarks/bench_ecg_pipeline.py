"""Throughput of the ECG input pipeline on this host against the step it feeds (samples/s).

Does the loader keep up with the train step? At the benchmark shapes (preprocessed
``(12, 5000)`` records, pretraining augmentations with crop 2500), three rates:

(a) host path: grain loader (global shuffle, batching, host threads) -> device put with a
    data-parallel sharding (prefetched) -> the jitted augmentations (crop, FT-surrogate,
    jitter, rescale);
(b) ``data.on_device=true``: the split held on the devices, the loader's record indices
    -> one jitted gather + the same augmentations;
(c) the ``tiny`` MAE pretraining train step (``configs/pretrain_mae_ecg.yaml``, set up
    by ``jaxecg.train.loop.setup``, synthetic records), fed by each of the two paths,
    timed in alternating rounds (median).

Also reports the offline reference preprocessing rate (records/s, one core).

    python benchmarks/bench_ecg_pipeline.py [--records 256] [--batch-size 16] [--steps 30]
        [--train-steps 4] [--rounds 5] [--no-train-step]

(with the package installed, ``pip install -e .``; from a bare checkout prefix
``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from jaxecg.data import (
    ArraySource,
    ECGAugmentConfig,
    IndexSource,
    ecg_augment_batch,
    make_loader,
    preprocess_ecg,
    synthetic_ecg,
    synthetic_ecg_record,
)
from jaxecg.devices import batch_sharding, make_mesh
from jaxecg.train import on_device
from jaxecg.train.config import load_config
from jaxecg.train.loop import setup

MAE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain_mae_ecg.yaml"


def _rate(step: Callable[[int], jax.Array], steps: int, batch_size: int) -> float:
    """Samples/s of ``step(i)`` over ``steps`` calls after one untimed call (compilation,
    filling the prefetch queue), waiting for the last result."""
    jax.block_until_ready(step(0))
    start = time.perf_counter()
    for i in range(1, steps + 1):
        out = step(i)
    jax.block_until_ready(out)
    return steps * batch_size / (time.perf_counter() - start)


def pipeline_rates(args: argparse.Namespace) -> tuple[float, float]:
    """(a) host loader + device put + augmentation, (b) on-device gather + augmentation."""
    source = ArraySource(synthetic_ecg(args.records, seed=0))
    mesh = make_mesh()
    loader = functools.partial(
        make_loader,
        batch_size=args.batch_size,
        seed=0,
        num_epochs=None,
        sharding=batch_sharding(mesh),
        num_threads=args.threads,
    )
    cfg = ECGAugmentConfig.preset("pretrain")
    key = jax.random.key(0)
    augment = jax.jit(functools.partial(ecg_augment_batch, cfg=cfg, train=True))
    host = loader(source)
    host_rate = _rate(
        lambda i: augment(jax.random.fold_in(key, i), next(host)["ecg"]),
        args.steps,
        args.batch_size,
    )

    resident = on_device.load_split(source, mesh, progress=False)
    indices = loader(IndexSource(len(source)))

    @jax.jit
    def gather_augment(resident, index, key):
        return ecg_augment_batch(
            key, on_device.gather_rows(resident, index, mesh)["ecg"], cfg, True
        )

    device_rate = _rate(
        lambda i: gather_augment(resident, next(indices)["index"], jax.random.fold_in(key, i)),
        args.steps,
        args.batch_size,
    )
    return host_rate, device_rate


def _mae_stepper(args: argparse.Namespace, *, on_device_data: bool) -> Callable[[int], jax.Array]:
    """One tiny MAE train step per call at the benchmark shapes, fed by the host loader or
    from the split on device (``jaxecg.train.loop.setup``, synthetic records)."""
    cfg = load_config(
        MAE_CONFIG,
        [
            f"train.batch_size={args.batch_size}",
            f"data.num_train={args.records}",
            f"data.num_eval={args.batch_size}",
            f"data.on_device={str(on_device_data).lower()}",
            "train.progress_bar=false",
        ],
    )
    run = setup(cfg)
    state = run.state
    if not on_device_data:
        # Synthetic records are generated on first use (then memoised): one pass over the
        # epoch first, so the timed steps read records as from a prepared dataset.
        for _ in range(run.steps_per_epoch):
            next(run.train_iter)

    def step(_: int) -> jax.Array:
        nonlocal state
        state, metrics = run.train_step(state, next(run.train_iter), run.seed_key)
        return metrics["loss"]

    return step


def train_step_rates(args: argparse.Namespace) -> dict[str, float]:
    """(c) median samples/s of the two steps, timed in alternating rounds of
    ``--train-steps`` steps (so both see the same machine load)."""
    steppers = {
        "data from the host loader": _mae_stepper(args, on_device_data=False),
        "data on device": _mae_stepper(args, on_device_data=True),
    }
    rates: dict[str, list[float]] = {name: [] for name in steppers}
    for name, step in steppers.items():
        jax.block_until_ready(step(0))  # compile
    for round_ in range(args.rounds):
        names = list(steppers)[round_ % 2 :] + list(steppers)[: round_ % 2]
        for name in names:
            rates[name].append(_rate(steppers[name], args.train_steps, args.batch_size))
    return {name: float(np.median(values)) for name, values in rates.items()}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=4, help="(c) steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="(c) timed rounds per step")
    parser.add_argument("--no-train-step", action="store_true", help="skip (c)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preprocess-records", type=int, default=4)
    args = parser.parse_args()

    print(
        f"devices: {len(jax.devices())} x {jax.devices()[0].platform}, batch {args.batch_size}, "
        f"records {args.records}, host threads {args.threads}; load average {load_average()}"
    )
    host_rate, device_rate = pipeline_rates(args)
    print(
        f"(a) host loader + device put + augment: {host_rate:.0f} samples/s (load {load_average()})"
    )
    print(f"(b) on-device gather + augment: {device_rate:.0f} samples/s (load {load_average()})")
    if not args.no_train_step:
        for name, rate in train_step_rates(args).items():
            print(
                f"(c) tiny MAE train step, {name}: {rate:.1f} samples/s "
                f"(median of {args.rounds} rounds; load {load_average()})"
            )

    raws = [synthetic_ecg_record(i, seed=1, raw=True)[0] for i in range(args.preprocess_records)]
    start = time.perf_counter()
    for raw in raws:
        preprocess_ecg(raw)
    pre_rate = len(raws) / (time.perf_counter() - start)
    print(f"offline reference preprocessing (ALS baseline): {pre_rate:.2f} records/s per core")


if __name__ == "__main__":
    main()
