"""One-shot GPU benchmark: JAX fp32/bf16 against torch eager AMP and torch.compile.

Workloads at the reference's shapes, the SAME weights in both frameworks (a Flax init exported
with ``convert.export``, as in :mod:`benchmarks.bench_models`, whose step builders run here):

- ``mae_step``     MAE train step, ``tiny`` preset, ``(B, 1, 12, 2500)``, AdamW; B = 128, 256;
- ``encoder_fwd``  ``tiny`` ECG encoder inference (attention pooling); B = 256;
- ``simclr_step``  SimCLR train step, ResNet50 at 210 px, two views, NT-Xent, Adam; 64 pairs.

Variants: ``jax fp32`` (XLA's default matmul precision, i.e. TF32 tensor cores on NVIDIA),
``jax bf16`` (the models' ``dtype=bfloat16`` compute with fp32 parameters, ``attention=auto``:
cuDNN flash attention on a GPU), ``torch eager bf16`` (``torch.autocast``; the reference's
explicit attention), ``torch eager bf16 sdpa`` (newer timm's fused attention) and
``torch.compile bf16`` (inductor, autocast, explicit attention).

FLOPs per step come from XLA's cost analysis of the compiled fp32 JAX step; every variant of a
workload is charged that same count (same math), so MFU = flops / median step time / peak
(790 TFLOP/s dense bf16). Each variant's first call (compilation) is reported apart, then
``warmup`` steps, then ``steps`` steps each timed to completion (``block_until_ready`` /
``torch.cuda.synchronize``); the median is reported. Its first output (the loss before the
update, or the features) is compared with the ``jax fp32`` one.

Processes: this one (neither JAX nor torch), then a JAX worker (inits and exports the
weights, runs the JAX variants), then a torch worker: one framework per process, so neither
holds GPU memory the other needs. A variant that fails is reported as such and the rest run;
variants due to start after the time budget are skipped.

    benchmarks/gpu.sh [--json FILE]                      # on a GPU, from anywhere
    python -m benchmarks.gpu --smoke --json out.json     # CPU, tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bench_models as bm
from jaxecg.errors import UsageError, run_command

PEAK_TFLOPS = 790.0  # H200, dense bf16, as the issue states it
GPU_CASES = (("mae_step", 128), ("mae_step", 256), ("encoder_fwd", 256), ("simclr_step", 64))
SMOKE_CASES = (("mae_step", 2), ("encoder_fwd", 2), ("simclr_step", 2))
JAX_VARIANTS = {"jax fp32": "float32", "jax bf16": "bfloat16"}
# variant -> (attention of torch_reference, compiled)
TORCH_VARIANTS = {
    "torch eager bf16": (bm.TORCH_REFERENCE, False),
    "torch eager bf16 sdpa": ("sdpa", False),
    "torch.compile bf16": (bm.TORCH_REFERENCE, True),
}
VARIANTS = (*JAX_VARIANTS, *TORCH_VARIANTS)
# Smoke runs cut the ECG models to one block each (compilation time is per layer).
SMOKE_DEPTHS = {"mae_step": {"depth": 1, "decoder_depth": 1}, "encoder_fwd": {"depth": 1}}
# ... and compile with LLVM's optimisations off: their CPU figures mean nothing anyway.
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
FLOPS_NOTE = (
    "FLOPs per step: XLA cost analysis of the compiled fp32 JAX step, the same count for "
    "every variant of a workload (same math); MFU = FLOPs / median step time / peak"
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the workers run; JSON-serialisable, passed to them on the command line."""

    cases: tuple[tuple[str, int], ...]
    variants: tuple[str, ...]
    ecg_time: int
    image_size: int
    backbone: str
    warmup: int
    steps: int
    compile_backend: str
    deadline: float  # time.time() after which no variant starts
    weights: str  # directory for the exported weights, first outputs and results
    smoke: bool

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        data["cases"] = tuple((w, b) for w, b in data["cases"])
        return cls(**{**data, "variants": tuple(data["variants"])})

    def weights_exported(self) -> bool:
        return all(Path(self.weights, f"{w}.torch.npz").exists() for w, _ in self.cases)

    @property
    def results(self) -> Path:
        return Path(self.weights, "results.jsonl")

    def output_path(self, workload: str, batch: int, variant: str) -> Path:
        """Where a variant's first output is saved, for the comparison with ``jax fp32``."""
        return Path(self.weights, f"{workload}-{batch}-{variant.replace(' ', '_')}.npy")


def model_config(settings: Settings, workload: str) -> Any:
    """The fp32 config of ``workload`` at the settings' shapes (one block per ViT in smoke)."""
    config = bm.model_config(workload, settings.backbone, settings.ecg_time)
    return (
        dataclasses.replace(config, **SMOKE_DEPTHS.get(workload, {})) if settings.smoke else config
    )


def emit(settings: Settings, record: dict[str, Any]) -> None:
    """Append one result (or the worker's ``info``) to the results file."""
    with open(settings.results, "a") as f:
        f.write(json.dumps(record) + "\n")


def measure(step: Callable[[], Any], warmup: int, steps: int) -> tuple[Any, dict[str, Any]]:
    """First call (compilation included), ``warmup`` untimed steps, ``steps`` timed steps.

    ``step`` must block until its result exists. Returns the first call's output and
    ``{first_s, times_s, median_s}``.
    """
    start = time.perf_counter()
    output = step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return output, {"first_s": first, "times_s": times, "median_s": statistics.median(times)}


def run_variants(
    settings: Settings,
    jobs: list[tuple[str, int, str]],
    build: Callable[[str, int, str], Callable[[], Any]],
    to_numpy: Callable[[Any], np.ndarray],
    extra: Callable[[Callable[[], Any], str], dict[str, Any]] = lambda step, variant: {},
) -> None:
    """Build, measure and record each ``(workload, batch, variant)`` job, one at a time.

    A job that raises is recorded with its error (traceback on stderr) and the next one
    runs: one broken variant must not cost the rest of a one-shot run. Jobs due to start
    after the deadline are recorded as skipped.
    """
    for workload, batch, variant in jobs:
        row: dict[str, Any] = {"workload": workload, "batch": batch, "variant": variant}
        if time.time() > settings.deadline:
            row["skipped"] = "time budget spent"
        else:
            try:
                step = build(workload, batch, variant)
                output, timing = measure(step, settings.warmup, settings.steps)
                np.save(settings.output_path(workload, batch, variant), to_numpy(output))
                row.update(timing, **extra(step, variant))
                del step, output
            except Exception as err:  # noqa: BLE001 -- recorded, reported, run exits 1
                traceback.print_exc()
                row["error"] = f"{type(err).__name__}: {err}"[:500]
        emit(settings, row)
        print(f"# {workload} B={batch} {variant}: " + summary(row), flush=True)


def summary(row: dict[str, Any]) -> str:
    if "median_s" in row:
        return f"first call {row['first_s']:.1f} s, median {1e3 * row['median_s']:.2f} ms/step"
    return row.get("error") or row.get("skipped") or "missing"


# ---------------------------------------------------------------------------------------
# Workers (one framework per process)
# ---------------------------------------------------------------------------------------


def xla_flops(compiled: Any) -> float:
    """FLOPs of one run of a compiled XLA executable, from its cost analysis."""
    flops = float(compiled.cost_analysis().get("flops", 0.0))
    if not flops > 0:
        raise RuntimeError(f"XLA's cost analysis gave no FLOP count ({flops})")
    return flops


def jax_worker(settings: Settings) -> None:
    """Init and export the weights (for the torch worker too), then run the JAX variants."""
    import jax
    import jax.numpy as jnp

    from jaxecg.models.precision import with_precision

    if not settings.smoke and jax.default_backend() != "gpu":
        raise UsageError(f"JAX runs on {jax.default_backend()!r}, not a GPU; use --smoke on a CPU")
    emit(settings, {"info": {"jax": jax.__version__, "device": jax.devices()[0].device_kind}})
    models = {}
    for workload in dict(settings.cases):
        config = model_config(settings, workload)
        models[workload] = config, bm.save_weights(workload, config, Path(settings.weights))[0]

    def build(workload: str, batch: int, variant: str) -> Callable[[], Any]:
        config, variables = models[workload]
        config = with_precision(config, dtype=JAX_VARIANTS[variant])
        model = bm.jax_model(workload, config, bm.CONFIG_ATTENTION)
        arrays = bm.inputs(
            workload, batch, image_size=settings.image_size, ecg_time=settings.ecg_time
        )
        # Train steps donate their state: each variant gets its own copy of the weights.
        weights = jax.tree.map(jnp.copy, variables)
        return bm.jax_runner(workload, model, weights, bm.jax_data(workload, arrays))

    def flops(step: Any, variant: str) -> dict[str, Any]:
        return {"flops": xla_flops(step.compiled)} if variant == "jax fp32" else {}

    jobs = [(w, b, v) for w, b in settings.cases for v in JAX_VARIANTS if v in settings.variants]
    run_variants(settings, jobs, build, lambda out: np.asarray(out, np.float32), flops)


def torch_worker(settings: Settings) -> None:
    """Run the torch variants on the weights the JAX worker exported."""
    import torch

    if not settings.smoke and not torch.cuda.is_available():
        raise UsageError("torch sees no CUDA device; use --smoke on a CPU")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    emit(settings, {"info": {"torch": torch.__version__, "device": name}})
    if settings.smoke:
        torch.set_num_threads(1)  # a shared CPU: OpenMP workers spinning on taken cores

    def build(workload: str, batch: int, variant: str) -> Callable[[], Any]:
        attention, compiled = TORCH_VARIANTS[variant]
        torch._dynamo.reset()  # each compiled variant compiles afresh: its first call is its own
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = bm.torch_weights(workload, settings.weights, attention).to(device)
        arrays = bm.inputs(
            workload, batch, image_size=settings.image_size, ecg_time=settings.ecg_time
        )
        data = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
        backend = settings.compile_backend if compiled else None
        return bm.torch_runner(workload, model, data, torch.bfloat16, backend)

    # Eager variants of every workload first: the compiled ones are the slowest to start.
    jobs = [(w, b, v) for v in TORCH_VARIANTS if v in settings.variants for w, b in settings.cases]
    run_variants(settings, jobs, build, lambda out: out.detach().float().cpu().numpy())


WORKERS = {"jax": jax_worker, "torch": torch_worker}


# ---------------------------------------------------------------------------------------
# Orchestration: run the workers, assemble rows, print the table
# ---------------------------------------------------------------------------------------


def run_worker(framework: str, settings: Settings) -> int:
    """One worker process; its progress lines and errors go to this process's stdout/stderr."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu",
        "--worker",
        framework,
        "--settings",
        json.dumps(dataclasses.asdict(settings)),
    ]
    env = dict(os.environ)
    if settings.smoke:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(command, check=False, cwd=root, env=env).returncode


def rel_diff(settings: Settings, row: dict[str, Any]) -> float | None:
    """``max|out - ref| / max|ref|`` of the first outputs, ``ref`` being ``jax fp32``'s."""
    paths = [
        settings.output_path(row["workload"], row["batch"], v) for v in (row["variant"], "jax fp32")
    ]
    if not all(p.exists() for p in paths):
        return None
    out, ref = (np.load(p).astype(np.float64) for p in paths)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def assemble(settings: Settings, failures: dict[str, str]) -> tuple[list[dict], dict]:
    """Rows in plan order (missing ones named after their worker's failure), and worker info."""
    found, info = {}, {}
    if settings.results.exists():
        for line in settings.results.read_text().splitlines():
            record = json.loads(line)
            if "info" in record:
                info.update(record["info"])
            else:
                found[(record["workload"], record["batch"], record["variant"])] = record
    rows = []
    for workload, batch in settings.cases:
        case = [found.get((workload, batch, v)) for v in settings.variants]
        flops = next((r.get("flops") for r in case if r and r["variant"] == "jax fp32"), None)
        for variant, row in zip(settings.variants, case):
            if row is None:
                framework = "jax" if variant in JAX_VARIANTS else "torch"
                row = {"workload": workload, "batch": batch, "variant": variant}
                row["error"] = failures.get(framework, "no result")
            row["flops"] = flops
            if "median_s" in row:
                row["samples_per_s"] = batch / row["median_s"]
                row["tflops_per_s"] = flops / row["median_s"] / 1e12 if flops else None
                row["mfu"] = row["tflops_per_s"] / PEAK_TFLOPS if flops else None
                row["max_rel_diff_vs_jax_fp32"] = rel_diff(settings, row)
            rows.append(row)
    return rows, info


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one row per (workload, batch, variant)."""

    def num(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    head = (
        "| workload | batch | variant | first call s | median ms/step | samples/s | TFLOP/s "
        "| MFU | max rel diff vs jax fp32 | status |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        ok = "median_s" in r
        ms = 1e3 * r["median_s"] if ok else None
        lines.append(
            f"| {r['workload']} | {r['batch']} | {r['variant']} "
            f"| {num(r.get('first_s'), '.1f')} | {num(ms, '.2f')} "
            f"| {num(r.get('samples_per_s'), '.1f')} | {num(r.get('tflops_per_s'), '.1f')} "
            f"| {num(r.get('mfu'), '.1%')} | {num(r.get('max_rel_diff_vs_jax_fp32'), '.1e')} "
            f"| {'ok' if ok else summary(r)} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, tiny shapes (B=2, T=200, 32 px, ResNet18), no warm-up, 1 timed step, "
        "torch.compile with the aot_eager backend",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--variants", type=bm.csv_list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--warmup", type=int, help="untimed steps after the first call (3)")
    parser.add_argument("--steps", type=int, help="timed steps, the median reported (20)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=400.0,
        help="no variant starts after this many seconds (the last one may still run ~1.5 min)",
    )
    parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace, weights: str) -> Settings:
    smoke = args.smoke
    return Settings(
        cases=SMOKE_CASES if smoke else GPU_CASES,
        variants=tuple(args.variants),
        ecg_time=200 if smoke else bm.ECG_TIME,
        image_size=32 if smoke else bm.IMAGE_SIZE,
        backbone="resnet18" if smoke else "resnet50",
        warmup=args.warmup if args.warmup is not None else (0 if smoke else 3),
        steps=args.steps if args.steps is not None else (1 if smoke else 20),
        # Inductor's C++ codegen takes minutes on a small CPU; aot_eager still traces the
        # model and its backward through dynamo/AOTAutograd.
        compile_backend="aot_eager" if smoke else "inductor",
        deadline=time.time() + args.budget_s,
        weights=weights,
        smoke=smoke,
    )


def benchmark(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxecg-gpu-bench-") as weights:
        settings = settings_from(args, weights)
        print(f"# {time.strftime('%Y-%m-%d %H:%M')} {' '.join(sys.argv)}", flush=True)
        if settings.smoke:
            print("# smoke: CPU, tiny shapes, ResNet18; torch.compile backend aot_eager (no "
                  "inductor codegen on CPU: too slow here); figures are not GPU figures")  # fmt: skip
        failures = {}
        for framework in WORKERS:
            if framework == "torch" and not settings.weights_exported():
                failures[framework] = "not run: the JAX worker exported no weights"
                continue
            code = run_worker(framework, settings)
            if code == UsageError.exit_code:
                raise UsageError(f"the {framework} worker cannot run here (its error above)")
            if code:
                failures[framework] = f"{framework} worker exited with code {code}"
        rows, info = assemble(settings, failures)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "smoke": settings.smoke,
        "devices": info,
        "peak_tflops": PEAK_TFLOPS,
        "flops_note": FLOPS_NOTE,
        "shapes": {"ecg": [1, 12, settings.ecg_time], "image_px": settings.image_size},
        "backbone": settings.backbone,
        "warmup": settings.warmup,
        "steps": settings.steps,
        "compile_backend": settings.compile_backend,
        "total_s": time.perf_counter() - start,
    }
    print(f"\n# {json.dumps(info)}\n# {FLOPS_NOTE} ({PEAK_TFLOPS:g} TFLOP/s dense bf16)")
    print(f"# samples/s: ECGs, or image pairs for simclr_step; total {meta['total_s']:.0f} s\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 1 if any("median_s" not in r for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        settings = Settings.from_json(args.settings)
        return run_command(
            f"gpu-benchmark {args.worker} worker", lambda: WORKERS[args.worker](settings)
        )
    return run_command("gpu-benchmark", lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
