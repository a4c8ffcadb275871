"""Data parallelism: a step on 4 devices equals the step on 1 device for the same global
batch (MAE; SimCLR, whose NT-Xent and BatchNorm must see the global batch), and a
two-process ``jax.distributed`` run on localhost feeds each process its own records and
computes what one process computes on the same global batches."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh
from multihost_worker import EMBED_ENCODER
from train_helpers import CONFIGS, TINY, quiet_args, records

from jaxecg.devices import batch_sharding
from jaxecg.embed import EMBEDDINGS, INDEX, SIGNATURE, embed, open_data
from jaxecg.encoders import load_encoder
from jaxecg.train.config import load_config
from jaxecg.train.loop import TrainState, setup
from jaxecg.train.mesh import make_mesh


def first_step(config: str, mesh: Mesh) -> tuple[dict, TrainState]:
    """``(metrics, state after)`` of the first step of ``config``'s end-to-end run set up on
    ``mesh``. The step records its gradients, taken at the same initial parameters on
    either mesh, in the optimiser's moments (after one step Adam's ``mu`` is ``0.1 * grad``)."""
    run = setup(
        load_config(CONFIGS / f"{config}.yaml", [*TINY[config], *quiet_args(config)]), mesh=mesh
    )
    batch = next(run.train_iter)
    if "image" in batch:
        # Noise frames: the synthetic frames' clipped, flat background makes max-pool ties,
        # whose gradient routing flips with float rounding (not a data-parallel effect).
        batch["image"] = jax.device_put(
            np.random.default_rng(0).uniform(size=batch["image"].shape).astype(np.float32),
            batch["image"].sharding,
        )
    state, metrics = run.train_step(run.state, batch, run.seed_key)
    return jax.device_get(metrics), jax.device_get(state)


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("config", ["pretrain_mae_ecg", "pretrain_simclr_cmr"])
def test_four_devices_match_one(config):
    """The gradients, losses and BatchNorm statistics of one step on 4 devices equal those
    on 1 device. Compared: the gradients themselves (through Adam's moments after the
    first step), not Adam's updates, which divide by sqrt(v) and so turn float32 rounding
    of a near-zero gradient into a difference of order lr."""
    devices = jax.devices()
    assert len(devices) == 4
    one = Mesh(np.array(devices[:1]), ("data",), axis_types=(AxisType.Auto,))
    metrics_1, state_1 = first_step(config, one)
    metrics_4, state_4 = first_step(config, make_mesh())
    # Tolerances: float32 sums in another order (per-device partials, then a cross-device
    # sum): ~1e-6 relative; a data-parallel mistake (per-device BatchNorm statistics or
    # NT-Xent negatives) changes the gradients by far more than 1e-4.
    for name in metrics_1:
        np.testing.assert_allclose(
            metrics_4[name], metrics_1[name], rtol=1e-5, atol=1e-6, err_msg=name
        )
    moments = list(zip(jax.tree.leaves(state_4.opt_state), jax.tree.leaves(state_1.opt_state)))
    assert sum(float(np.abs(y).sum()) > 0 for _, y in moments) > len(moments) // 2
    errors = [_relative_error(x, y) for x, y in moments if np.abs(y).max() > 0]
    assert max(errors) <= 1e-4, max(errors)
    for x, y in moments:
        if not np.abs(y).max() > 0:
            np.testing.assert_array_equal(x, y)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
        state_4.batch_stats,
        state_1.batch_stats,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MULTIHOST = (
    *quiet_args("pretrain_mae_ecg"),
    "train.stop_after=3",
    "train.eval_every=0",
    "train.progress_bar=false",
    "train.log_every=1",
)


def test_two_processes_feed_disjoint_halves_and_match_one_process(tmp_path):
    """Two ``jax.distributed`` processes of 2 devices each on localhost: at every step they
    feed disjoint records whose union is the one-process loader's global batch, their
    losses equal a one-process run's on the same global batches, and ``embed`` writes the
    same files as one process."""
    port = _free_port()
    workdir = tmp_path / "run"
    argv = [
        sys.executable,
        str(Path(__file__).with_name("multihost_worker.py")),
        str(tmp_path),
        str(CONFIGS / "pretrain_mae_ecg.yaml"),
        *TINY["pretrain_mae_ecg"],
        *MULTIHOST,
        f"train.workdir={workdir}",
        f"distributed.coordinator_address=127.0.0.1:{port}",
        "distributed.num_processes=2",
    ]
    # The session's compilation cache (JAX_COMPILATION_CACHE_DIR) is inherited.
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    procs = [
        subprocess.Popen(
            [*argv, f"distributed.process_id={i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]

    # One process on 4 devices: its loader's batches, and the two processes' batches.
    run = setup(
        load_config(
            CONFIGS / "pretrain_mae_ecg.yaml",
            [*TINY["pretrain_mae_ecg"], *MULTIHOST, f"train.workdir={tmp_path / 'one'}"],
        )
    )
    train_set, _ = run.task.datasets()
    index_of = {train_set[i]["ecg"].tobytes(): i for i in range(len(train_set))}
    fed = [json.loads((tmp_path / f"fed{i}.json").read_text()) for i in range(2)]
    state, losses = run.state, []
    for first, second in zip(*fed, strict=True):
        own = [index_of[row.tobytes()] for row in np.asarray(next(run.train_iter)["ecg"])]
        assert len(first) == len(second) == 4 and not set(first) & set(second)
        assert set(first) | set(second) == set(own)
        # The global batch of the two processes: process 0's rows, then process 1's.
        rows = [train_set[i] for i in first + second]
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        state, metrics = run.train_step(
            state, jax.device_put(batch, batch_sharding(run.mesh)), run.seed_key
        )
        losses.append(float(metrics["loss"]))
    assert len(losses) == 3
    for name in ("metrics.jsonl", "metrics.process1.jsonl"):
        logged = records(workdir, name)
        assert [r["step"] for r in logged] == [1, 2, 3]
        np.testing.assert_allclose([r["loss"] for r in logged], losses, rtol=1e-5)
    assert (workdir / "checkpoints" / "3").is_dir()

    one = tmp_path / "embed_one"
    encoder = load_encoder("pluto", kind="ecg", seed=5, **EMBED_ENCODER)
    embed(
        encoder,
        open_data("synthetic-ecg", num_records=10),
        one,
        batch_size=4,
        chunk_size=4,
        progress=False,
    )
    for name in (EMBEDDINGS, INDEX, SIGNATURE):
        assert (tmp_path / "embed" / name).read_bytes() == (one / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "embed").iterdir()) == sorted(
        p.name for p in one.iterdir()
    )
