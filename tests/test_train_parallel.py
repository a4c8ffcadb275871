"""Data parallelism: a step on 4 devices equals the step on 1 device for the same global
batch (MAE; SimCLR, whose NT-Xent and BatchNorm must see the global batch), and a
two-process ``jax.distributed`` run on localhost agrees on the loss in both processes."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh
from train_helpers import (
    CONFIGS,
    TINY,
    quiet_args,
    records,
)

from jaxecg.train.config import load_config
from jaxecg.train.loop import TrainState, setup
from jaxecg.train.mesh import make_mesh


def two_steps(config: str, mesh: Mesh) -> tuple[dict, dict, TrainState]:
    """``(metrics, params before, state after)`` of the first two steps of ``config``'s
    end-to-end run set up on ``mesh`` (the schedule starts at lr 0, so step 2 moves)."""
    run = setup(
        load_config(CONFIGS / f"{config}.yaml", [*TINY[config], *quiet_args(config)]), mesh=mesh
    )
    # A copy: the step donates the state, and on CPU device_get can alias its buffers.
    before = jax.tree.map(lambda x: np.array(x, copy=True), run.state.params)
    state = run.state
    noise = np.random.default_rng(0)
    for _ in range(2):
        batch = next(run.train_iter)
        if "image" in batch:
            # Noise frames: the synthetic frames' clipped, flat background makes max-pool ties,
            # whose gradient routing flips with float rounding (not a data-parallel effect).
            batch["image"] = jax.device_put(
                noise.uniform(size=batch["image"].shape).astype(np.float32),
                batch["image"].sharding,
            )
        state, metrics = run.train_step(state, batch, run.seed_key)
    return jax.device_get(metrics), before, jax.device_get(state)


@pytest.mark.parametrize("config", ["pretrain_mae_ecg", "pretrain_simclr_cmr"])
def test_four_devices_match_one(config):
    devices = jax.devices()
    assert len(devices) == 4
    one = Mesh(np.array(devices[:1]), ("data",), axis_types=(AxisType.Auto,))
    metrics_1, before, state_1 = two_steps(config, one)
    metrics_4, _, state_4 = two_steps(config, make_mesh())
    # Tolerances: float32 sums in another order (per-device partials, then a cross-device
    # sum). Losses agree to 1e-5 relative; each parameter leaf's update and each optimiser
    # moment to 1 % of that leaf's largest value (the stem convolution, whose gradient sums
    # over the most positions, differs most: ~0.5 %); BatchNorm statistics to 1e-5.
    for name in metrics_1:
        np.testing.assert_allclose(
            metrics_4[name], metrics_1[name], rtol=1e-5, atol=1e-6, err_msg=name
        )
    update_1 = jax.tree.map(np.subtract, state_1.params, before)
    update_4 = jax.tree.map(np.subtract, state_4.params, before)
    assert max(np.abs(u).max() for u in jax.tree.leaves(update_1)) > 1e-4  # it did move
    for a, b in [(update_4, update_1), (state_4.opt_state, state_1.opt_state)]:
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert np.abs(x - y).max() <= 0.01 * np.abs(y).max() + 1e-7
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
        state_4.batch_stats,
        state_1.batch_stats,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_agree_on_the_loss(tmp_path):
    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "jaxecg",
        "train",
        str(CONFIGS / "pretrain_mae_ecg.yaml"),
        *TINY["pretrain_mae_ecg"],
        "train.steps=12",
        "train.stop_after=3",
        "train.eval_every=0",
        f"train.workdir={tmp_path}",
        "train.progress_bar=false",
        f"distributed.coordinator_address=127.0.0.1:{port}",
        "distributed.num_processes=2",
    ]
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
    first, second = records(tmp_path), records(tmp_path, "metrics.process1.jsonl")
    assert [r["step"] for r in first] == [1, 2, 3]
    assert [r["step"] for r in second] == [1, 2, 3]
    for a, b in zip(first, second):
        assert (a["loss"], a["lr"], a["ncc"]) == (b["loss"], b["lr"], b["ncc"])
    assert (tmp_path / "checkpoints" / "3").is_dir()
