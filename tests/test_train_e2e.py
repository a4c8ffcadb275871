"""Each experiment config trains end to end on synthetic data (tiny overrides), and the
loop's guards: kill-and-resume equivalence, non-finite loss, batch/device mismatch.

The MAE runs share one set of overrides, so with the session's compilation cache
(conftest) they compile the MAE step once.
"""

import json
import math

import jax
import numpy as np
import pytest
from train_helpers import (
    QUIET,
    STEPS,
    quiet_args,
    records,
    run,
)

from jaxecg.data import ArraySource, DatasetWriter, make_loader, synthetic_ecg_record
from jaxecg.train import loop
from jaxecg.train.checkpoint import Checkpointer

MAE_STEPS = STEPS["pretrain_mae_ecg"]
MAE_ARGS = (*quiet_args("pretrain_mae_ecg"), "train.checkpoint_every=6", "train.eval_every=12")

# the validation metrics each task must report
VAL_KEYS = {
    "finetune_ecg": {"val/loss", "val/auroc", "val/f1", "val/accuracy"},
    "pretrain_simclr_cmr": {
        "val/loss",
        "val/top1",
        "val/top5",
        "val/classifier_top1",
        "val/classifier_top5",
    },
    "finetune_cmr": {"val/loss", "val/auroc", "val/f1", "val/accuracy"},
}


def assert_trained(workdir, steps, val_keys):
    log = records(workdir)
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    assert all({"step", "loss", "lr", "samples_per_sec"} <= set(r) for r in log)
    assert val_keys <= set(log[-1]) and all(math.isfinite(log[-1][k]) for k in val_keys)
    losses = np.array([r["loss"] for r in log])
    window = steps // 4
    assert losses[-window:].mean() < losses[:window].mean(), losses
    # The run ends with a checkpoint and TensorBoard events next to the metrics.
    assert (workdir / "checkpoints" / str(steps)).is_dir()
    assert any((workdir / "tensorboard").iterdir())


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """One uninterrupted tiny MAE pretraining run."""
    workdir = tmp_path_factory.mktemp("mae_straight")
    assert run("pretrain_mae_ecg", workdir, *MAE_ARGS) == 0
    return workdir


def test_mae_config_trains_and_loss_falls(mae_run):
    assert_trained(mae_run, MAE_STEPS, {"val/loss", "val/ncc"})
    # Periodic checkpoints every 6 steps, keeping the 2 newest plus the best validation one.
    kept = sorted(int(p.name) for p in (mae_run / "checkpoints").iterdir() if p.name.isdigit())
    assert kept[-2:] == [18, 24] and set(kept) <= {12, 18, 24}


@pytest.mark.parametrize("config", list(VAL_KEYS))
def test_config_trains_and_loss_falls(config, tmp_path):
    assert (
        run(config, tmp_path, *quiet_args(config), "train.eval_every=0", "train.checkpoint_every=0")
        == 0
    )
    assert_trained(tmp_path, STEPS[config], VAL_KEYS[config])


def test_killed_run_resumes_with_identical_losses(mae_run, tmp_path):
    """Stopping after 10 of 24 steps and resuming replays steps 11..24 exactly: same
    parameters, optimiser state, schedule position, batches and per-step random draws."""
    assert run("pretrain_mae_ecg", tmp_path, *MAE_ARGS, "train.stop_after=10") == 0
    assert [r["step"] for r in records(tmp_path)] == list(range(1, 11))
    assert run("pretrain_mae_ecg", tmp_path, *MAE_ARGS, resume=True) == 0
    straight, resumed = records(mae_run), records(tmp_path)
    assert [r["step"] for r in resumed] == list(range(1, MAE_STEPS + 1))
    keys = ("step", "loss", "lr", "ncc", "val/loss", "val/ncc")
    for a, b in zip(straight, resumed):
        assert [a.get(k) for k in keys] == [b.get(k) for k in keys]


def test_existing_checkpoints_need_resume(mae_run, capsys):
    assert run("pretrain_mae_ecg", mae_run, *MAE_ARGS) == 2
    assert "--resume" in capsys.readouterr().err
    saved = json.loads((mae_run / "checkpoints" / "24" / "config" / "metadata").read_text())
    assert saved["task"] == "mae_pretrain" and saved["train"]["steps"] == MAE_STEPS


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    """A dataset (``data.source=PATH``) with one NaN record: the run stops at the step
    whose batch holds it, names that step and keeps the checkpoint before it."""
    records_ = [synthetic_ecg_record(i, length=1000)[0] for i in range(72)]
    # Which record the third global batch starts with (the loader's order is a pure
    # function of the record count, seed and batch size).
    order = make_loader(ArraySource({"i": np.arange(64)}), batch_size=8, seed=0, num_epochs=None)
    bad = int([next(order) for _ in range(3)][-1]["i"][0])
    data = tmp_path / "data"
    writer = DatasetWriter(data, {"train": 64, "val": 8}, leads=12, length=1000)
    for i, ecg in enumerate(records_):
        split, row = ("train", i) if i < 64 else ("val", i - 64)
        writer.append(
            split, f"r{i}", np.full_like(ecg, np.nan) if split == "train" and row == bad else ecg, 0
        )
    writer.finish({})

    # The loss stays on device between sync points: the NaN of step 3 is found at the
    # checkpoint of step 4 (logging only every 5 steps), yet named exactly, and step 4's
    # state (frozen at step 2's by the step itself) is not saved.
    workdir = tmp_path / "run"
    code = run(
        "pretrain_mae_ecg",
        workdir,
        *MAE_ARGS,
        f"data.source={data}",
        "train.checkpoint_every=2",
        "train.log_every=5",
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite training loss at step 3;" in err
    assert "Last good checkpoint: step 2" in err
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [2]
    assert records(workdir) == []


def test_loop_fetches_from_device_only_at_log_and_checkpoint_steps(tmp_path, monkeypatch):
    """30 steps logging every 10: any device→host transfer outside the loop's explicit
    fetch or a checkpoint save raises, and the fetch runs once per log step (plus once
    for the start step), not once per step."""
    fetches, saves = [], []
    fetch, save = loop._fetch, Checkpointer.save

    def counted_fetch(tree):
        with jax.transfer_guard_device_to_host("allow"):
            fetches.append(1)
            return fetch(tree)

    def counted_save(self, step, *args, **kwargs):
        with jax.transfer_guard_device_to_host("allow"):
            saves.append(step)
            return save(self, step, *args, **kwargs)

    monkeypatch.setattr(loop, "_fetch", counted_fetch)
    monkeypatch.setattr(Checkpointer, "save", counted_save)
    overrides = ("train.log_every=10", "train.eval_every=0", "train.checkpoint_every=0")
    with jax.transfer_guard_device_to_host("disallow_explicit"):
        code = run(
            "pretrain_mae_ecg",
            tmp_path,
            *QUIET["pretrain_mae_ecg"],
            "train.steps=40",
            "train.stop_after=30",
            *overrides,
        )
    assert code == 0
    assert len(fetches) == 1 + 3 and saves == [30]
    assert [r["step"] for r in records(tmp_path)] == [10, 20, 30]


def test_batch_not_divisible_by_devices_fails_before_compiling(tmp_path, capsys):
    assert run("pretrain_mae_ecg", tmp_path, "train.batch_size=6", "train.steps=2") == 2
    err = capsys.readouterr().err
    assert "train.batch_size=6" in err and "4 devices" in err
    assert not (tmp_path / "checkpoints").exists()
