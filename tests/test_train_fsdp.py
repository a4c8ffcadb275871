"""``train.param_sharding=fsdp`` on the 4 forced host devices: the memory it saves (MAE
``base``, from shapes and shardings alone), the same 5 steps as ``replicated`` (tiny MAE),
and a sharded checkpoint saved on 4 devices that resumes on 2 with the same next loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, PartitionSpec
from train_helpers import CONFIGS, TINY, quiet_args

from jaxecg.train import mesh as mesh_lib
from jaxecg.train.checkpoint import Checkpointer
from jaxecg.train.config import load_config
from jaxecg.train.loop import Run, new_state, setup
from jaxecg.train.tasks import get_task

CONFIG = "pretrain_mae_ecg"


def _config(*overrides: str):
    return load_config(CONFIGS / f"{CONFIG}.yaml", [*TINY[CONFIG], *quiet_args(CONFIG), *overrides])


def _steps(run: Run, state, count: int):
    """``(state, losses)`` after ``count`` steps of ``run`` from ``state``."""
    losses = []
    for _ in range(count):
        state, metrics = run.train_step(state, next(run.train_iter), run.seed_key)
        losses.append(metrics["loss"])
    return state, np.asarray(jax.device_get(losses))


def _host_copy(tree):
    # A copy: the step donates the state, and on CPU device_get can alias its buffers.
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    """5 FSDP steps, a checkpoint of step 5, then step 6 on the same 4 devices."""
    cfg = _config("train.param_sharding=fsdp")
    run = setup(cfg)
    state, losses = _steps(run, run.state, 5)
    directory = tmp_path_factory.mktemp("fsdp") / "checkpoints"
    checkpoints = Checkpointer(directory)
    checkpoints.save(5, state, data_state=run.train_iter.get_state(), config=cfg.to_dict())
    checkpoints.wait()
    checkpoints.close()
    shardings = jax.tree.map(lambda x: x.sharding, state)
    local_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
    after_5 = _host_copy(state)
    _, next_loss = _steps(run, state, 1)
    return {
        "cfg": cfg,
        "losses": losses,
        "after_5": after_5,
        "shardings": shardings,
        "local_bytes": local_bytes,
        "next_loss": next_loss[0],
        "checkpoints": directory,
    }


def test_fsdp_splits_large_tensors_and_keeps_small_ones_whole():
    assert mesh_lib.fsdp_spec((64, 256), 4) == PartitionSpec(None, "data")
    assert mesh_lib.fsdp_spec((256, 64), 4) == PartitionSpec("data", None)
    assert mesh_lib.fsdp_spec((64, 192), 4) == PartitionSpec()  # 12288 < 2**14 elements
    assert mesh_lib.fsdp_spec((2**14 + 1,), 4) == PartitionSpec()  # no divisible axis
    # The largest axis the device count divides, not the largest axis.
    assert mesh_lib.fsdp_spec((1, 300, 766), 4) == PartitionSpec(None, "data", None)


def test_fsdp_holds_at_most_35_percent_of_replicated_bytes_for_mae_base():
    """Parameters + AdamW state of the MAE ``base`` preset, per device, from the shardings
    the run would use (shapes only: nothing of ``base`` is allocated or trained)."""
    cfg = load_config(CONFIGS / f"{CONFIG}.yaml", ["model.preset=base"])
    task = get_task(cfg.task).build(cfg)
    batch = {"ecg": jax.ShapeDtypeStruct((8, 12, cfg.data.record_length), jnp.float32)}
    variables = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0), batch)
    tx, _, _ = task.optimizer(variables["params"], steps_per_epoch=10, total_steps=100)
    state = jax.eval_shape(functools.partial(new_state, tx), variables)
    mesh = mesh_lib.make_mesh()
    replicated = mesh_lib.bytes_per_device(state, mesh_lib.state_shardings(state, mesh))
    fsdp = mesh_lib.bytes_per_device(state, mesh_lib.state_shardings(state, mesh, "fsdp"))
    params = sum(x.size for x in jax.tree.leaves(state.params))
    assert params > 100e6  # the base encoder and its 8-block decoder
    assert replicated >= 3 * 4 * params  # fp32 weights and both Adam moments
    assert fsdp <= 0.35 * replicated, (fsdp, replicated)


def test_fsdp_steps_match_replicated(fsdp):
    replicated = setup(_config())
    state, losses = _steps(replicated, replicated.state, 5)
    np.testing.assert_allclose(fsdp["losses"], losses, rtol=1e-5)
    expected = jax.device_get(state)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        fsdp["after_5"],
        expected,
    )
    # The FSDP state really is split, and the step kept that layout.
    specs = [s.spec for s in jax.tree.leaves(fsdp["shardings"])]
    assert PartitionSpec(None, "data") in specs and PartitionSpec() in specs
    expected_bytes = mesh_lib.bytes_per_device(expected, fsdp["shardings"])
    assert fsdp["local_bytes"] == expected_bytes
    assert expected_bytes < mesh_lib.bytes_per_device(
        expected, mesh_lib.state_shardings(expected, replicated.mesh)
    )


def test_fsdp_checkpoint_from_4_devices_resumes_on_2(fsdp):
    two = Mesh(np.array(jax.devices()[:2]), ("data",), axis_types=(AxisType.Auto,))
    run = setup(fsdp["cfg"], mesh=two, restore=Checkpointer(fsdp["checkpoints"]))
    assert int(run.state.step) == 5
    kernel = run.state.params["blocks_0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec(None, "data")
    assert kernel.addressable_shards[0].data.shape == (64, 128)  # 256 columns over 2 devices
    jax.tree.map(np.testing.assert_array_equal, _host_copy(run.state), fsdp["after_5"])
    _, next_loss = _steps(run, run.state, 1)
    np.testing.assert_allclose(next_loss[0], fsdp["next_loss"], rtol=1e-5)
