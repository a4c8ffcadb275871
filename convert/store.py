"""``save``/``restore``: converted variables as an Orbax checkpoint plus a JSON sidecar.

Layout of a saved directory::

    DIR/variables/     Orbax StandardCheckpointHandler tree {"params": ..., "batch_stats": ...}
    DIR/convert.json   {"format", "kind", "config", "source", "source_sha256", "report"}

The directory appears only complete: everything is written into a hidden sibling
temporary directory that is renamed to ``DIR`` at the end, and removed on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from convert.report import LoadReport
from convert.targets import binding
from jaxecg.config import Config

SIDECAR = "convert.json"
VARIABLES = "variables"
FORMAT_VERSION = 1


def save(
    variables: Mapping[str, Any],
    directory: str | Path,
    *,
    kind: str,
    config: Config | Mapping[str, Any] | None,
    report: LoadReport | None = None,
) -> Path:
    """Write ``variables`` of ``kind``/``config`` to a new ``directory``; returns its path.

    Raises ``ValueError`` if ``directory`` already exists (nothing is overwritten).
    """
    directory = Path(directory).absolute()
    config = binding(kind).config(config)
    if directory.exists():
        raise ValueError(f"output directory {str(directory)!r} already exists; choose a new one")
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        # Synchronous: when save returns or raises, nothing is still writing into `partial`.
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            checkpointer.save(partial / VARIABLES, args=ocp.args.StandardSave(dict(variables)))
        sidecar = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "config": config.to_dict(),
            "source": report.source if report else None,
            "source_sha256": report.source_sha256 if report else None,
            "report": report.to_dict() if report else None,
        }
        (partial / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
        os.rename(partial, directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return directory


def read_sidecar(directory: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a directory written by :func:`save`."""
    path = Path(directory) / SIDECAR
    if not path.is_file():
        raise ValueError(f"{str(directory)!r} is not a convert.save directory (no {SIDECAR})")
    sidecar = json.loads(path.read_text())
    if sidecar.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r}: sidecar format {sidecar.get('format')!r}, expected {FORMAT_VERSION}"
        )
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
