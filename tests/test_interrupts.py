"""The signal flag the long loops poll, and the run-directory helpers of a resume."""

import json
import os
import signal

import pytest

from jaxecg.interrupts import stop_requests
from jaxecg.train.resume import config_differences, truncate_log


def test_signals_raise_the_flag_and_the_old_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with stop_requests() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM" and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_ctrl_c_aborts_at_once():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), stop_requests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_truncate_log_keeps_steps_up_to_the_restored_one_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(lines) + '\n{"step": 5, "lo')
    truncate_log(path, 2)
    assert path.read_text() == "\n".join(lines[:2]) + "\n"
    truncate_log(path, 0)
    assert path.read_text() == ""


def test_config_differences_ignore_run_length_and_bookkeeping():
    stored = {"model": {"depth": 2}, "optim": {"lr": 1e-3}, "train": {"steps": 10, "seed": 0}}
    given = {"model": {"depth": 3}, "optim": {"lr": 1e-3}, "train": {"steps": 99, "seed": 1}}
    assert config_differences(stored, given) == [
        "model.depth: 2 in the checkpoint, 3 now",
        "train.seed: 0 in the checkpoint, 1 now",
    ]
