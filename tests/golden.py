"""Access to the reference's golden cases kept in ``tests/golden`` (``JAXECG_GOLDEN_DIR`` overrides).

One place that knows the manifest layout, so parity tests read as
"load case, run our module, compare each expected array".
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

GOLDEN_DIR = Path(
    os.environ.get("JAXECG_GOLDEN_DIR", Path(__file__).resolve().parent / "golden")
)


@functools.cache
def manifest() -> dict[str, Any]:
    return json.loads((GOLDEN_DIR / "manifest.json").read_text())


@functools.cache
def _cases_by_id() -> dict[str, dict[str, Any]]:
    return {case["id"]: case for case in manifest()["cases"]}


def case(case_id: str) -> dict[str, Any]:
    """The manifest entry of ``case_id`` (e.g. ``"dev/mae/forward"``)."""
    return _cases_by_id()[case_id]


def case_ids(prefix: str) -> list[str]:
    """All case ids starting with ``prefix``, in manifest order."""
    return [cid for cid in _cases_by_id() if cid.startswith(prefix)]


def arrays(case_id: str) -> dict[str, np.ndarray]:
    """Every array of a case, keyed by its manifest name."""
    with np.load(GOLDEN_DIR / case(case_id)["arrays_file"]) as data:
        return {k: data[k] for k in data.files}


def checkpoint_path(checkpoint_id: str) -> Path:
    """The on-disk file (``.xz``-compressed for the dev set) of a checkpoint id."""
    return GOLDEN_DIR / manifest()["checkpoints"][checkpoint_id]["file"]


def expected_names(case_id: str) -> list[str]:
    return [k for k, v in case(case_id)["arrays"].items() if v["role"] == "expected"]


def assert_matches(case_id: str, name: str, actual: Any) -> None:
    """Compare ``actual`` to the expected array ``name`` with the manifest's tolerance.

    Float arrays: ``|actual - expected| <= atol + rtol * |expected|``;
    arrays marked ``exact`` (ints, masks) must be equal.
    """
    spec = case(case_id)["arrays"][name]
    expected = arrays(case_id)[name]
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (
        f"{case_id}:{name} shape {actual.shape} != expected {expected.shape}"
    )
    if spec.get("exact"):
        np.testing.assert_array_equal(actual, expected, err_msg=f"{case_id}:{name}")
        return
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bound = spec["atol"] + spec["rtol"] * np.abs(expected.astype(np.float64))
    worst = float(np.max(err - bound)) if err.size else 0.0
    assert np.all(err <= bound), (
        f"{case_id}:{name} exceeds tolerance (atol={spec['atol']}, rtol={spec['rtol']}): "
        f"max abs err {float(err.max()):.3g}, worst excess {worst:.3g}"
    )
