"""The one-shot GPU benchmark's --smoke mode (CPU, tiny shapes), as CI runs it.

It runs in a subprocess with ``grain`` and ``wfdb`` made unimportable (the GPU machines
have neither): the benchmark path must not need them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    tmp = tmp_path_factory.mktemp("gpu_bench")
    blocked = tmp / "blocked"
    for name in ("grain", "wfdb"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked: the GPU machines do not have it')\n"
        )
    path = [str(blocked), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    probe = [sys.executable, "-c", "import wfdb"]
    assert subprocess.run(probe, check=False, env=env, capture_output=True).returncode != 0
    out = tmp / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--json", str(out)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_workload_and_variant_has_a_finite_measured_row(smoke) -> None:
    result, _ = smoke
    rows = {(r["workload"], r["batch"], r["variant"]): r for r in result["rows"]}
    expected = {(w, b, v) for w, b in gpu.SMOKE_CASES for v in gpu.VARIANTS}
    assert set(rows) == expected
    for key, row in rows.items():
        assert "error" not in row and "skipped" not in row, (key, row)
        assert math.isfinite(row["samples_per_s"]) and row["samples_per_s"] > 0, key
        assert row["samples_per_s"] == pytest.approx(key[1] / row["median_s"])
        assert row["first_s"] > 0 and len(row["times_s"]) == result["meta"]["steps"]


def test_mfu_is_the_jax_fp32_flop_count_over_step_time_and_peak(smoke) -> None:
    result, _ = smoke
    for workload, batch in gpu.SMOKE_CASES:
        case = [r for r in result["rows"] if (r["workload"], r["batch"]) == (workload, batch)]
        flops = {r["flops"] for r in case}
        assert len(flops) == 1 and next(iter(flops)) > 0, (workload, flops)
        for r in case:
            assert r["mfu"] == pytest.approx(
                r["flops"] / r["median_s"] / (result["meta"]["peak_tflops"] * 1e12)
            )


def test_outputs_agree_with_jax_fp32_within_bf16_rounding(smoke) -> None:
    # Same weights and inputs in every variant: the first loss / features differ only by
    # bf16 compute (a wrong weight mapping or input layout would be off by O(1)).
    result, _ = smoke
    for r in result["rows"]:
        bound = 0.0 if r["variant"] == "jax fp32" else 0.3
        assert r["max_rel_diff_vs_jax_fp32"] <= bound, (r["workload"], r["variant"])


def test_table_and_flops_note_are_printed(smoke) -> None:
    result, stdout = smoke
    assert "| workload | batch | variant |" in stdout
    assert "cost analysis of the compiled fp32 JAX step" in stdout
    assert result["meta"]["smoke"] is True
