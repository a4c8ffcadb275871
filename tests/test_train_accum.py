"""``train.grad_accum``: 4 micro-batches in one jitted step give the update of one pass
over the same global batch (MAE on the 4 forced host devices)."""

import jax
import numpy as np
from train_helpers import CONFIGS, TINY, quiet_args

from jaxecg.data import synthetic_ecg_record
from jaxecg.devices import batch_sharding, make_mesh, replicated
from jaxecg.losses.reconstruction import ncc
from jaxecg.train.config import load_config
from jaxecg.train.loop import make_train_step, new_state
from jaxecg.train.tasks.mae import MAETask

BATCH = 16


class _NoiseInBatchMAE(MAETask):
    """The MAE objective with each example's masking noise carried in the batch and the
    record used whole (no crop or augmentation): a deterministic mean over examples, the
    case in which accumulating gradients must not change the update. (The real task draws
    masks per micro-batch, from ``fold_in(rng, k)``.)"""

    def _forward(self, params, batch, rng, train):
        x = batch["ecg"]
        out = self.model.apply({"params": params}, x, train=train, noise=batch["noise"])
        return out.loss, ncc(x, out.reconstruction)


def test_four_micro_batches_equal_one_pass():
    cfg = load_config(
        CONFIGS / "pretrain_mae_ecg.yaml",
        [*TINY["pretrain_mae_ecg"], *quiet_args("pretrain_mae_ecg"), "optim.schedule=constant"],
    )
    task = _NoiseInBatchMAE(cfg)
    mesh = make_mesh()
    rng = np.random.default_rng(0)
    batch = {
        "ecg": np.stack([synthetic_ecg_record(i, length=500)[0] for i in range(BATCH)]),
        "noise": rng.uniform(size=(BATCH, cfg.model.num_patches)).astype(np.float32),
    }
    batch = jax.device_put(batch, batch_sharding(mesh))
    key = jax.device_put(jax.random.PRNGKey(0), replicated(mesh))
    variables = jax.jit(task.init_variables)(key, batch)
    tx, schedule, _ = task.optimizer(variables["params"], steps_per_epoch=4, total_steps=8)
    outcomes = []
    for accum in (1, 4):
        step = jax.jit(make_train_step(task, tx, schedule, grad_accum=accum))
        state, metrics = step(new_state(tx, variables), batch, key)
        outcomes.append(jax.device_get((state, metrics)))
    (one, metrics_1), (four, metrics_4) = outcomes
    for name in ("loss", "ncc", "lr"):
        np.testing.assert_allclose(metrics_4[name], metrics_1[name], rtol=1e-5, err_msg=name)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), one.params, variables["params"])
    assert max(jax.tree.leaves(moved)) > 1e-4
    # Parameters and both Adam moments (the first is 0.1 x the gradient itself).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        (four.params, four.opt_state),
        (one.params, one.opt_state),
    )
    assert int(four.step) == 1 and int(four.first_bad_step) == 0
