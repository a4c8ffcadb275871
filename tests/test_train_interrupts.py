"""Runs that survive people and clusters: SIGINT/SIGTERM checkpoint the step in flight and
exit 130/143; ``kill -9`` at random moments never loses a resumable state; every resume
ends exactly where the uninterrupted run does, with each step logged once.

The runs are children of a forkserver (see ``train_processes``): the tiny MAE, 20 steps
of batch 4, compiled once into the session's compilation cache.
"""

import json
import os
import re
import signal
import struct
import time

import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event, SessionLog
from train_processes import CONFIG, STEPS, TINY, Trainers, wait_for

from jaxecg.train.cli import main


def rows(workdir):
    """The logged rows; a line still being written while a test polls is left out."""
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def inode(path):
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def saved_steps(workdir):
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def purge_steps(workdir):
    """Steps of the TensorBoard 'session start' events, which hide later events before them."""
    steps = []
    for path in sorted((workdir / "tensorboard").iterdir()):
        data = path.read_bytes()
        while data:  # TFRecord: length (u64), crc (u32), payload, crc (u32)
            (length,) = struct.unpack("<Q", data[:8])
            event = Event.FromString(data[12 : 12 + length])
            data = data[16 + length :]
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                steps.append(event.step)
    return steps


@pytest.fixture(scope="module")
def trainers():
    return Trainers()


@pytest.fixture(scope="module")
def reference(trainers, tmp_path_factory):
    """The uninterrupted run: its directory, metrics and timings (start → first logged step,
    start → exit). It checkpoints only at the end, which changes none of its numbers."""
    workdir = tmp_path_factory.mktemp("straight")
    log = workdir.parent / "straight.log"
    began = time.monotonic()
    process = trainers.start(log, f"train.workdir={workdir}", "train.checkpoint_every=0")
    wait_for(lambda: rows(workdir), process)
    first_step = time.monotonic() - began
    process.join()
    assert process.exitcode == 0, log.read_text()
    duration = time.monotonic() - began
    return {"workdir": workdir, "rows": rows(workdir), "first": first_step, "end": duration}


def assert_same_run(workdir, reference):
    """Every step once, with the uninterrupted run's numbers (the final loss included)."""
    got = rows(workdir)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    keys = ("step", "loss", "lr", "ncc", "val/loss")
    want = reference["rows"]
    assert [[r.get(k) for k in keys] for r in got] == [[r.get(k) for k in keys] for r in want]


def interrupt(trainers, workdir, log, signum, after, *argv):
    """Start a run, send ``signum`` once step ``after`` is logged; the step it names."""
    process = trainers.start(log, f"train.workdir={workdir}", "train.checkpoint_every=0", *argv)
    assert wait_for(lambda: rows(workdir) and rows(workdir)[-1]["step"] >= after, process)
    os.kill(process.pid, signum)
    process.join()
    text = log.read_text()
    assert process.exitcode == 128 + signum, text
    (line,) = [t for t in text.splitlines() if t.startswith("jaxecg train: ")]
    step = int(re.search(r"after step (\d+);", line).group(1))
    assert signal.Signals(signum).name in line
    assert str(workdir / "checkpoints" / str(step)) in line
    # No periodic checkpoints (checkpoint_every=0): the interrupted step's is the signal's doing.
    assert step < STEPS and step in saved_steps(workdir) and rows(workdir)[-1]["step"] == step
    return step


def test_sigint_then_sigterm_save_the_step_in_flight_and_resume_exactly(
    trainers, reference, tmp_path
):
    workdir = tmp_path / "run"
    first = interrupt(trainers, workdir, tmp_path / "1.log", signal.SIGINT, 3)
    second = interrupt(trainers, workdir, tmp_path / "2.log", signal.SIGTERM, first + 2, "--resume")
    assert f"resumed from step {first} " in (tmp_path / "2.log").read_text()
    log = tmp_path / "3.log"
    code = trainers.run(log, f"train.workdir={workdir}", "train.checkpoint_every=0", "--resume")
    assert code == 0, log.read_text()
    assert f"resumed from step {second} " in log.read_text()
    assert_same_run(workdir, reference)
    # TensorBoard hides what followed each restored step (tensorboardX's purge_step).
    assert purge_steps(workdir) == [1, first + 1, second + 1]


def test_kill_9_at_random_moments_and_resume_auto(trainers, reference, tmp_path, capsys):
    """20 ``kill -9`` at moments drawn from a seeded RNG within the observed run: half during
    start-up (restore, data, compilation from the cache; timed by the first attempt), half
    within a few steps of the attempt's first checkpoint (steps, saves, log writes). The final
    ``--resume auto`` ends with the uninterrupted run's numbers."""
    workdir = tmp_path / "run"
    # A failed set-up first (no such dataset) leaves nothing in the corrected command's way.
    code = main([str(CONFIG), *TINY, f"train.workdir={workdir}", f"data.source={tmp_path}/none"])
    assert code == 2 and "no manifest.json" in capsys.readouterr().err
    assert not workdir.exists()

    rng = np.random.default_rng(13)
    step_time = (reference["end"] - reference["first"]) / STEPS
    argv = (f"train.workdir={workdir}", "train.checkpoint_every=2", "--resume", "auto")
    startup = None
    for attempt in range(20):
        log = tmp_path / f"attempt{attempt}.log"
        done = max(saved_steps(workdir), default=0)
        stale = inode(workdir / "metrics.jsonl")
        began = time.monotonic()
        process = trainers.start(log, *argv)

        def stepped(done=done, stale=stale):
            # This attempt's rows: it rewrote the log (a new inode) and logged past ``done``.
            fresh = inode(workdir / "metrics.jsonl") not in (None, stale)
            return fresh and bool(rows(workdir)) and rows(workdir)[-1]["step"] > done

        if startup is None or (attempt % 2 == 0 and done <= STEPS - 6):
            assert wait_for(stepped, process)
            startup = startup or time.monotonic() - began
            resumed = re.search(r"resumed from step (\d+)", log.read_text())
            assert (resumed and int(resumed.group(1))) == (done or None)  # auto: fresh, resumes
            # Past this attempt's first checkpoint, into the next steps, saves and log writes.
            assert wait_for(lambda done=done: max(saved_steps(workdir), default=0) > done, process)
            time.sleep(rng.uniform(0, 3 * step_time))
        else:  # before the first new step (at the latest as it is logged: saves come in pairs)
            deadline = began + rng.uniform(0, startup)
            while time.monotonic() < deadline and not stepped():
                time.sleep(0.01)
        assert process.is_alive(), f"attempt {attempt} ended before its kill:\n{log.read_text()}"
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    log = tmp_path / "final.log"
    assert trainers.run(log, *argv) == 0, log.read_text()
    assert "resumed from step" in log.read_text()
    assert_same_run(workdir, reference)


def test_resume_refuses_a_changed_config_naming_each_key(reference, capsys):
    workdir = reference["workdir"]
    base = [str(CONFIG), *TINY, f"train.workdir={workdir}"]
    assert main([*base, "model.depth=2", "optim.lr=2e-3", "train.steps=30", "--resume"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "model.depth: 1 in the checkpoint, 2 now" in line
    assert "optim.lr: 0.001 in the checkpoint, 0.002 now" in line
    assert "train.steps" not in line.split(" (only ")[0]  # run length may change
    assert main(base) == 2  # a used workdir without --resume
    assert "--resume auto" in capsys.readouterr().err


def test_resume_without_checkpoint_and_bad_lengths_are_one_line_errors(tmp_path, capsys):
    base = [str(CONFIG), *TINY, f"train.workdir={tmp_path / 'run'}"]
    assert main([*base, "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert main([*base, "train.steps=-3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "jaxecg train: error: train.steps must be >= 1, got -3"
    )


def test_a_library_error_raises_with_its_traceback_and_leaves_no_debris(tmp_path, monkeypatch):
    def broken_setup(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr("jaxecg.train.loop.setup", broken_setup)
    with pytest.raises(ValueError, match="a bug"):
        main([str(CONFIG), *TINY, f"train.workdir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()
