"""The Orbax checkpoint wrapper: retention, and restore onto the mesh shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxecg.train import mesh as mesh_lib
from jaxecg.train.checkpoint import Checkpointer, abstract_like


def test_keeps_latest_and_best_and_restores_sharded(tmp_path):
    mesh = mesh_lib.make_mesh()
    state = mesh_lib.replicate({"w": jnp.zeros((3, 4)), "step": jnp.zeros((), jnp.int32)}, mesh)
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=2, keep_best=1, best_metric="loss")
    # Step 2 has the best validation loss; steps 4 and 5 are the two newest.
    for step, loss in [(1, 5.0), (2, 1.0), (3, 3.0), (4, 4.0), (5, None)]:
        saved = {"w": jnp.full((3, 4), float(step)), "step": jnp.asarray(step, jnp.int32)}
        ckpt.save(
            step,
            mesh_lib.replicate(saved, mesh),
            data_state={"position": step},
            config={"task": "x"},
            metrics=None if loss is None else {"loss": loss},
        )
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]

    restored, data_state, config = ckpt.restore(abstract_like(state))
    assert int(restored["step"]) == 5 and data_state == {"position": 5}
    assert config == {"task": "x"}
    assert restored["w"].sharding == mesh_lib.replicated(mesh)
    np.testing.assert_array_equal(restored["w"], np.full((3, 4), 5.0))
    best, _, _ = ckpt.restore(abstract_like(state), step=2)
    np.testing.assert_array_equal(best["w"], np.full((3, 4), 2.0))
    ckpt.close()


def test_max_mode_keeps_highest_metric(tmp_path):
    state = {"w": jnp.zeros(2)}
    ckpt = Checkpointer(tmp_path, keep=1, keep_best=1, best_metric="auroc", best_mode="max")
    for step, auroc in [(1, 0.9), (2, 0.5), (3, 0.7)]:
        ckpt.save(step, state, data_state=None, config={}, metrics={"auroc": auroc})
    ckpt.wait()
    assert ckpt.all_steps() == [1, 3]
    ckpt.close()


def test_batch_size_must_split_over_devices():
    mesh = mesh_lib.make_mesh()
    assert mesh_lib.check_batch_size(8, mesh) == 8
    with pytest.raises(ValueError, match=r"train.batch_size=6 .* device count \(4 devices"):
        mesh_lib.check_batch_size(6, mesh)
    assert jax.device_count() == 4
