"""``data.on_device=true``: the training split held on the 4 forced host devices.

The batches gathered on device are the host loader's, row for row, across epochs and
after a resume from the host loader's state; a short MAE run (interrupted and resumed)
has the host path's losses; bf16 residency; config and memory errors; resuming
checkpoints written before these keys existed. (Two processes were checked by hand, not
here: a two-process run costs the suite a minute.)
"""

import functools
import json

import jax
import numpy as np
import pytest
from train_processes import CONFIG, TINY

from jaxecg.data import ArraySource, IndexSource, make_loader
from jaxecg.devices import batch_sharding, make_mesh
from jaxecg.errors import ConfigError
from jaxecg.train import on_device
from jaxecg.train.checkpoint import Checkpointer
from jaxecg.train.config import load_config
from jaxecg.train.loop import setup
from jaxecg.train.resume import config_differences, with_defaults

# 10 records over 4 devices: 3 rows each, the last 2 rows padding; 2 batches of 4 an epoch.
NUM_RECORDS, BATCH, SEED = 10, 4, 3


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    return ArraySource(
        {
            "ecg": rng.normal(size=(NUM_RECORDS, 3, 7)).astype(np.float32),
            "label": rng.integers(0, 5, size=NUM_RECORDS).astype(np.int32),
        }
    )


def _loader(source):
    sharding = batch_sharding(make_mesh())
    return make_loader(source, batch_size=BATCH, seed=SEED, num_epochs=None, sharding=sharding)


@pytest.fixture(scope="module")
def gather():
    return jax.jit(functools.partial(on_device.gather_rows, mesh=make_mesh()))


def test_gathered_batches_are_the_host_loaders_across_epochs_and_a_resume(split, gather):
    mesh = make_mesh()
    resident = on_device.load_split(split, mesh, progress=False)
    assert resident["ecg"].shape == (12, 3, 7)  # padded to a multiple of the device count
    host, indices = _loader(split), _loader(IndexSource(NUM_RECORDS))
    assert indices.steps_per_epoch == host.steps_per_epoch == 2

    def same_next_batch(indices_loader):
        expected, got = next(host), gather(resident, next(indices_loader)["index"])
        assert got["ecg"].dtype == np.float32 and got["label"].dtype == np.int32
        assert got["ecg"].sharding.is_equivalent_to(expected["ecg"].sharding, 3)
        for key in expected:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]))

    for _ in range(3):  # into the second epoch (reshuffled)
        same_next_batch(indices)
    # The index stream continues from the host loader's checkpointed position.
    resumed = _loader(IndexSource(NUM_RECORDS))
    resumed.set_state(json.loads(json.dumps(host.get_state())))
    for _ in range(3):  # across the next epoch boundary
        same_next_batch(resumed)


def test_bfloat16_residency_stores_the_signal_in_bf16(split, gather):
    """bf16 storage; the gather (the on-device part of a step) returns the rounded rows in
    float32, so the rest of the step is the float32 program (a whole bf16 MAE step would
    cost the suite another compilation)."""
    resident = on_device.load_split(split, make_mesh(), on_device_dtype="bfloat16", progress=False)
    assert resident["ecg"].dtype == jax.numpy.bfloat16 and resident["label"].dtype == np.int32
    rows = np.array([9, 0, 4, 2])
    got = gather(resident, jax.numpy.asarray(rows))
    rounded = split.array("ecg")[rows].astype(jax.numpy.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(got["ecg"]), rounded)
    np.testing.assert_array_equal(np.asarray(got["label"]), split.array("label")[rows])


def _steps(run, state, count: int):
    """``(state, losses)`` after ``count`` steps of ``run`` from ``state``."""
    losses = []
    for _ in range(count):
        state, metrics = run.train_step(state, next(run.train_iter), run.seed_key)
        losses.append(metrics["loss"])
    return state, list(jax.device_get(losses))


def test_training_on_device_matches_the_host_loader_through_a_resume(tmp_path):
    """Tiny MAE (``train_processes.TINY``, whose host-loader programs other tests share),
    4 steps: host loader uninterrupted vs on device checkpointed at 2 and resumed."""
    host_run = setup(load_config(CONFIG, TINY))
    _, host = _steps(host_run, host_run.state, 4)
    cfg = load_config(CONFIG, [*TINY, "data.on_device=true"])
    run = setup(cfg)
    state, first = _steps(run, run.state, 2)
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    checkpoints.save(2, state, data_state=run.train_iter.get_state(), config=cfg.to_dict())
    checkpoints.wait()
    resumed = setup(cfg, restore=checkpoints)
    checkpoints.close()
    assert int(resumed.state.step) == 2
    _, rest = _steps(resumed, resumed.state, 2)
    np.testing.assert_allclose(first + rest, host, rtol=1e-6)


def test_config_and_memory_errors():
    with pytest.raises(ConfigError, match=r"data\.on_device_dtype: 'float16' is not one of"):
        load_config(CONFIG, ["data.on_device=true", "data.on_device_dtype=float16"])
    with pytest.raises(ConfigError, match=r"data\.on_device_dtype=bfloat16 only applies with"):
        load_config(CONFIG, ["data.on_device_dtype=bfloat16"])

    class Device:
        def memory_stats(self):
            return {"bytes_limit": 1000, "bytes_in_use": 200}

        def __str__(self):
            return "gpu:0"

    check = functools.partial(on_device.check_fits, what="the split", hint="use more devices")
    with pytest.raises(ConfigError, match=r"needs 1,200 bytes on each device, but gpu:0 has 800"):
        check(1200, [Device()])
    check(800, [Device()])  # fits: no error


def test_a_checkpoint_from_before_on_device_resumes_and_either_path_may_continue():
    stored = load_config(CONFIG, TINY).to_dict()
    for key in ("on_device", "on_device_dtype"):
        del stored["data"][key]  # a config written before these keys existed
    now = load_config(CONFIG, [*TINY, "data.on_device=true"]).to_dict()
    assert config_differences(with_defaults(stored), now) == []
    bf16 = load_config(CONFIG, [*TINY, "data.on_device=true", "data.on_device_dtype=bfloat16"])
    (changed,) = config_differences(with_defaults(stored), bf16.to_dict())
    assert changed.startswith("data.on_device_dtype:")
