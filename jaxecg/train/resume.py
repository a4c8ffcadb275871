"""Deciding whether a run starts fresh or resumes, and keeping its directory consistent.

* :func:`resume_step`: ``--resume`` (must resume), ``--resume auto`` (resume when there
  is a checkpoint, as a cluster's re-queued job script wants) or neither; a resume
  refuses a config that differs from the stored one in anything but run length and
  bookkeeping (:data:`MAY_CHANGE`), naming every differing key with both values.
* :func:`truncate_log`: drop log rows past the restored step (and a line torn by a
  kill), so every step appears once.
* :func:`no_debris`: a run that fails before its first checkpoint leaves neither a
  ``checkpoints/`` directory nor an empty workdir behind, so the corrected command runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from jaxecg.errors import ConfigError, UsageError
from jaxecg.train.checkpoint import Checkpointer
from jaxecg.train.config import ExperimentConfig

Resume = bool | Literal["auto"]

# Keys a resumed run may change: how long it runs, how often it logs/evaluates/saves,
# how it reports, how its state is laid out over the devices (the restore re-lays it), where
# it lives, how a (re-queued) cluster job reaches its peers, and whether the training split
# is read by the host loader or held on the devices (the same batches either way).
MAY_CHANGE = frozenset(
    {
        "train.steps",
        "train.stop_after",
        "train.log_every",
        "train.eval_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.progress_bar",
        "train.param_sharding",
        "train.workdir",
        "data.on_device",
        "distributed.coordinator_address",
        "distributed.process_id",
    }
)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """``"key: A in the checkpoint, B now"`` for every key outside :data:`MAY_CHANGE`."""
    old, new = _flatten(stored), _flatten(given)
    absent = "<absent>"
    return [
        f"{key}: {json.dumps(old.get(key, absent))} in the checkpoint, "
        f"{json.dumps(new.get(key, absent))} now"
        for key in sorted(old.keys() | new.keys())
        if key not in MAY_CHANGE and old.get(key, absent) != new.get(key, absent)
    ]


def with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the keys added to the configs since it was written at their
    defaults (e.g. ``data.on_device``), so they do not count as changes; as stored when it no
    longer parses (then its differences name what changed)."""
    try:
        return ExperimentConfig.from_dict(stored).to_dict()
    except ConfigError:
        return stored


def resume_step(checkpoints: Checkpointer, config: dict[str, Any], resume: Resume) -> int | None:
    """The step to resume from, or ``None`` to start fresh; errors on a mode the directory
    contradicts and on a config that differs from the checkpoint's."""
    step = checkpoints.latest_step()
    where = checkpoints.directory
    if resume is False:
        if step is not None:
            raise UsageError(
                f"{where} already holds checkpoints (newest: step {step}); pass --resume (or "
                "--resume auto) to continue that run, or choose another train.workdir"
            )
        return None
    if step is None:
        if resume == "auto":
            return None
        raise UsageError(f"--resume: no checkpoint in {where}; use --resume auto to start fresh")
    differences = config_differences(with_defaults(checkpoints.stored_config(step)), config)
    if differences:
        raise ConfigError(
            f"cannot resume step {step} of {where} with a different config: "
            + "; ".join(differences)
            + f" (only {', '.join(sorted(MAY_CHANGE))} may change on resume)"
        )
    return step


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the JSON lines of ``path`` with ``step <= last_step`` (rewritten atomically);
    a line a kill left half-written is dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", last_step + 1) <= last_step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _holds_checkpoint(directory: Path) -> bool:
    # Orbax names a finished step's directory by the bare step number.
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


@contextlib.contextmanager
def no_debris(workdir: Path, checkpoints: Path, *, owner: bool = True) -> Iterator[None]:
    """If the block fails before any checkpoint exists, remove the ``checkpoints`` directory
    and the ``workdir`` that it created (the latter only when left empty). ``owner``:
    whether this process cleans up (process 0 of a multi-process run)."""
    made_workdir, made_checkpoints = not workdir.exists(), not checkpoints.exists()
    try:
        yield
    except BaseException:
        if owner and made_checkpoints and not _holds_checkpoint(checkpoints):
            shutil.rmtree(checkpoints, ignore_errors=True)
        if owner and made_workdir and workdir.is_dir() and not any(workdir.iterdir()):
            workdir.rmdir()
        raise
