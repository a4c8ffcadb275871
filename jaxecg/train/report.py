"""A run that reports itself: one line per evaluation, ``curves.png``, a closing summary.

The loop calls :func:`evaluated` after each evaluation and :func:`finished` at the end;
both act on process 0 only. Everything is read back from what the run already wrote
(``metrics.jsonl``, the checkpoints), so the report says what a reader of the run
directory will find.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import tqdm

CURVES = "curves.png"


def _format(metrics: dict[str, Any]) -> str:
    return ", ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in metrics.items()
    )


def _records(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluated(workdir: Path, step: int, metrics: dict[str, float]) -> None:
    """Print the evaluation's metrics on one line and redraw ``RUN/curves.png``."""
    if jax.process_index() != 0:
        return
    from jaxecg.viz import plot_training_curves

    tqdm.tqdm.write(f"step {step}: val {_format(metrics)}")
    plot_training_curves(_records(workdir), workdir / CURVES)


def summary(workdir: Path, last: dict[str, Any]) -> str:
    """What the run left behind: best checkpoint and its metric, last metrics, the files."""
    from jaxecg.weights import run_checkpoint

    checkpoints = workdir / "checkpoints"
    best = run_checkpoint(checkpoints, "best")
    kept = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    lines = [
        f"run finished at step {last.get('step')}: {workdir}",
        f"  checkpoint for evaluation: step {best.step}, {best.chosen} ({best.step_dir})",
        f"  last metrics: {_format({k: v for k, v in last.items() if k != 'step'})}",
        f"  checkpoints: {checkpoints} (steps {', '.join(map(str, kept))})",
        f"  logs: {workdir / 'metrics.jsonl'}, {workdir / 'tensorboard'}"
        + (f", curves: {workdir / CURVES}" if (workdir / CURVES).is_file() else ""),
    ]
    return "\n".join(lines)


def finished(workdir: Path, last: dict[str, Any]) -> None:
    """Print :func:`summary` (process 0). Every process builds it: reading the checkpoints
    through Orbax is collective in a multi-process run, so process 0 alone would wait for
    peers that have moved on (a gloo collective mismatch on CPU)."""
    text = summary(workdir, last)
    if jax.process_index() == 0:
        print(text, flush=True)
