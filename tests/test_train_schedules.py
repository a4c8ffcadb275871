"""Learning-rate schedules against the golden lightning-bolts tables, and epoch→step conversion."""

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxecg.train.config import OptimConfig
from jaxecg.train.optim import make_schedule
from jaxecg.train.schedules import cosine, schedule_steps, warmup_cosine


@pytest.mark.parametrize("case_id", golden.case_ids("dev/tables/lr_schedule_"))
def test_warmup_cosine_reproduces_bolts_tables(case_id):
    cfg = golden.case(case_id)["config"]
    steps = golden.arrays(case_id)["step"]
    schedule = warmup_cosine(
        cfg["base_lr"],
        cfg["warmup_epochs"],
        cfg["max_epochs"],
        cfg["eta_min"],
        cfg["warmup_start_lr"],
    )
    with jax.enable_x64(True):
        lr = np.asarray(schedule(jnp.asarray(steps)))
    assert lr.dtype == np.float64
    golden.assert_matches(case_id, "lr", lr)
    # Under jit in float32 (as inside the optimiser) the same table to float32 precision.
    lr32 = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)))
    np.testing.assert_allclose(lr32, golden.arrays(case_id)["lr"], rtol=1e-5, atol=1e-10)


def test_torch_cosine_annealing_closed_form():
    import torch
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12, eta_min=1e-4)
    expected = []
    for _ in range(13):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    with jax.enable_x64(True):
        got = np.asarray(cosine(0.01, 12, 1e-4)(jnp.arange(13)))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_epochs_convert_with_real_steps_per_epoch():
    # 400 epochs with 10 % warmup at 37 batches per epoch.
    assert schedule_steps(warmup_epochs=40, epochs=400, steps_per_epoch=37, total_steps=None) == (
        40 * 37,
        400 * 37,
    )
    # train.steps overrides the length; the warmup keeps its fraction.
    assert schedule_steps(warmup_epochs=40, epochs=400, steps_per_epoch=37, total_steps=50) == (
        5,
        50,
    )
    optim = OptimConfig(lr=1e-3, epochs=4, warmup_epochs=1, schedule="warmup_cosine")
    schedule, total = make_schedule(optim, steps_per_epoch=10, total_steps=None)
    assert total == 40
    # Warmup ends at step warmup - 1 = 9 (bolts reaches the base lr one step early).
    assert float(schedule(9)) == pytest.approx(1e-3) and float(schedule(0)) == 0.0
    # A short run keeps at least one warmup step: with none, bolts would stay at lr 0.
    assert schedule_steps(warmup_epochs=10, epochs=200, steps_per_epoch=8, total_steps=6) == (
        1,
        6,
    )
    with pytest.raises(ValueError, match="warmup_epochs"):
        schedule_steps(warmup_epochs=5, epochs=5, steps_per_epoch=3, total_steps=None)
    with pytest.raises(ValueError, match="optim.warmup_epochs=0"):
        make_schedule(
            OptimConfig(warmup_epochs=0, schedule="warmup_cosine"),
            steps_per_epoch=10,
            total_steps=None,
        )
