"""The generic train step on a toy task (a bf16-computing task keeps fp32 state, the lr is
logged, a non-finite step freezes the state) and the classifiers' validation metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxecg.scoring import classification_metrics
from jaxecg.train.loop import TrainState, make_train_step
from jaxecg.train.tasks.base import Task


class _Linear(Task):
    """``loss = mean((x @ w - y)^2)`` with a running mean of ``x`` as "batch statistics",
    computed in ``dtype`` as a model with that compute dtype does (casting its parameters)."""

    seen_dtypes: list

    def __init__(self, dtype=jnp.float32) -> None:
        super().__init__(cfg=None)
        self.dtype = dtype
        self.seen_dtypes = []

    def datasets(self):
        raise NotImplementedError("the toy task is stepped directly")

    def init_variables(self, rng, batch):
        return {"params": {"w": jnp.ones((3, 1))}, "batch_stats": {"mean": jnp.zeros(3)}}

    def optimizer(self, params, *, steps_per_epoch, total_steps):
        raise NotImplementedError

    def loss(self, params, batch_stats, batch, rng):
        self.seen_dtypes.append(params["w"].dtype)
        x, w = batch["x"].astype(self.dtype), params["w"].astype(self.dtype)
        loss = jnp.mean((x @ w - batch["y"]) ** 2)
        return loss, ({"mean": 0.9 * batch_stats["mean"] + 0.1 * x.mean(0)}, {"loss": loss})

    def eval_outputs(self, params, batch_stats, batch, rng):
        raise NotImplementedError

    def summarize(self, outputs):
        raise NotImplementedError


def _state(tx: optax.GradientTransformation, step: int) -> TrainState:
    """The linear task's state at ``step`` (weights of ones, no bad step yet)."""
    params = {"w": jnp.ones((3, 1))}
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        batch_stats={"mean": jnp.zeros(3)},
        opt_state=tx.init(params),
        first_bad_step=jnp.zeros((), jnp.int32),
    )


@pytest.mark.parametrize("bf16", [False, True])
def test_train_step_precision_and_lr(bf16):
    task = _Linear(jnp.bfloat16 if bf16 else jnp.float32)
    schedule = optax.linear_schedule(0.1, 0.0, 10)
    tx = optax.sgd(schedule)
    state = _state(tx, step=4)
    state = state.replace(
        opt_state=jax.tree.map(
            lambda c: jnp.asarray(4, c.dtype) if c.ndim == 0 else c, state.opt_state
        )
    )
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.normal(size=(8, 3)).astype(np.float32),
        "y": rng.normal(size=(8, 1)).astype(np.float32),
    }
    new, metrics = jax.jit(make_train_step(task, tx, schedule))(state, batch, jax.random.PRNGKey(0))
    # The loss gets the fp32 master weights (the model casts); weights, optimiser and
    # statistics stay fp32.
    assert task.seen_dtypes == [jnp.float32]
    assert new.params["w"].dtype == jnp.float32 and new.batch_stats["mean"].dtype == jnp.float32
    assert int(new.step) == 5
    assert float(metrics["lr"]) == pytest.approx(float(schedule(4)))
    # The update is plain SGD at lr(4) on the fp32 gradient (bf16: to bf16 precision).
    grad = 2 * batch["x"].T @ (batch["x"] @ np.ones((3, 1)) - batch["y"]) / 8
    np.testing.assert_allclose(
        new.params["w"], 1 - float(schedule(4)) * grad, rtol=2e-2 if bf16 else 1e-5
    )


def test_classification_metrics():
    labels = np.array([0, 1, 2, 2, 1, 0])
    perfect = np.eye(3)[labels] * 5.0
    assert classification_metrics(perfect, labels, multilabel=False) == {
        "auroc": 1.0,
        "f1": 1.0,
        "accuracy": 1.0,
    }
    # Predict class 0 everywhere: balanced accuracy 1/3, F1 = mean(0.5, 0, 0).
    constant = np.tile([2.0, 0.0, 0.0], (6, 1))
    got = classification_metrics(constant, labels, multilabel=False)
    assert got["accuracy"] == pytest.approx(1 / 3) and got["f1"] == pytest.approx(0.5 / 3)
    assert got["auroc"] == pytest.approx(0.5)
    # Multilabel: label 1 is never positive, so AUROC averages labels 0 and 2 only.
    targets = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]])
    logits = np.where(targets == 1, 3.0, -3.0)
    got = classification_metrics(logits, targets, multilabel=True)
    assert got == {"auroc": 1.0, "f1": pytest.approx(2 / 3), "accuracy": 1.0}


def test_non_finite_step_is_recorded_on_device_and_freezes_the_state():
    """A NaN batch at step 3: the step records 3 and keeps the state; a later finite
    batch changes nothing either, so the last good state is what the loop can save."""
    task = _Linear()
    tx = optax.sgd(0.1)
    state = _state(tx, step=2)
    step = jax.jit(make_train_step(task, tx, optax.constant_schedule(0.1)))
    rng = np.random.default_rng(0)
    good = {"x": rng.normal(size=(8, 3)), "y": rng.normal(size=(8, 1))}
    bad = {"x": np.full((8, 3), np.nan), "y": good["y"]}
    key = jax.random.PRNGKey(0)
    after_bad, metrics = step(state, jax.tree.map(jnp.float32, bad), key)
    assert not np.isfinite(float(metrics["loss"])) and int(after_bad.first_bad_step) == 3
    after_good, metrics = step(after_bad, jax.tree.map(jnp.float32, good), key)
    assert np.isfinite(float(metrics["loss"])) and int(after_good.first_bad_step) == 3
    for frozen in (after_bad, after_good):
        assert int(frozen.step) == 2
        jax.tree.map(np.testing.assert_array_equal, frozen.params, state.params)
        np.testing.assert_array_equal(frozen.batch_stats["mean"], np.zeros(3))
    # The same finite batch from the unfrozen state does update it.
    moved, _ = step(state, jax.tree.map(jnp.float32, good), key)
    assert int(moved.step) == 3 and int(moved.first_bad_step) == 0
    assert not np.allclose(moved.params["w"], 1.0)
