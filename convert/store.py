"""``save``/``restore``: converted variables as an Orbax checkpoint plus a JSON sidecar.

Layout of a saved directory::

    DIR/variables/     Orbax StandardCheckpointHandler tree {"params": ..., "batch_stats": ...}
    DIR/convert.json   {"format", "kind", "config", "source", "source_sha256", "report"}

The directory appears only complete: everything is written into a hidden sibling
temporary directory (:class:`jaxecg.staging.StagedDirectory`) that is renamed to ``DIR``
at the end and removed on failure; one left by a killed process is removed by the next
save to the same ``DIR``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from convert.report import LoadReport
from convert.targets import binding
from jaxecg.config import Config
from jaxecg.errors import CheckpointError, UsageError
from jaxecg.staging import StagedDirectory

SIDECAR = "convert.json"
VARIABLES = "variables"
FORMAT_VERSION = 1


class CheckpointWriteError(CheckpointError):
    """Writing the output failed (disk full, permissions): a failed run, not bad input."""

    exit_code = 1


def save(
    variables: Mapping[str, Any],
    directory: str | Path,
    *,
    kind: str,
    config: Config | Mapping[str, Any] | None,
    report: LoadReport | None = None,
) -> Path:
    """Write ``variables`` of ``kind``/``config`` to a new ``directory``; returns its path.

    Raises :class:`~jaxecg.errors.UsageError` if ``directory`` already exists (nothing is
    overwritten) and :class:`CheckpointWriteError` if writing fails (nothing is left).
    """
    directory = Path(directory).absolute()
    config = binding(kind).config(config)
    if directory.exists():
        raise UsageError(f"output directory {str(directory)!r} already exists; choose a new one")
    with StagedDirectory(directory) as stage:
        try:
            # Synchronous: when save returns or raises, nothing is still writing into it.
            with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
                checkpointer.save(
                    stage.path / VARIABLES, args=ocp.args.StandardSave(dict(variables))
                )
            sidecar = {
                "format": FORMAT_VERSION,
                "kind": kind,
                "config": config.to_dict(),
                "source": report.source if report else None,
                "source_sha256": report.source_sha256 if report else None,
                "report": report.to_dict() if report else None,
            }
            (stage.path / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
        except OSError as err:
            raise CheckpointWriteError(f"cannot write {str(directory)!r}: {err}") from err
        stage.commit()
    return directory


def read_sidecar(directory: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a directory written by :func:`save`."""
    path = Path(directory) / SIDECAR
    if not path.is_file():
        raise CheckpointError(f"{str(directory)!r} is not a convert.save directory (no {SIDECAR})")
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({err})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT_VERSION:
        found = sidecar.get("format") if isinstance(sidecar, dict) else None
        raise CheckpointError(f"{str(path)!r}: sidecar format {found!r}, expected {FORMAT_VERSION}")
    return sidecar


def restore(directory: str | Path) -> tuple[dict[str, Any], str, Config]:
    """``(variables, kind, config)`` from a directory written by :func:`save`.

    The variables are restored against the abstract tree of ``Module(config)``, so a
    directory whose tree does not fit its recorded config fails here.
    """
    directory = Path(directory).absolute()
    sidecar = read_sidecar(directory)
    target = binding(sidecar["kind"])
    config = target.config(sidecar["config"])
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        variables = checkpointer.restore(
            directory / VARIABLES, args=ocp.args.StandardRestore(target.abstract(config))
        )
    return dict(variables), sidecar["kind"], config
