"""Model speed and memory: JAX/Flax vs the PyTorch reference, side by side on this host.

Both frameworks run the SAME weights (a Flax init exported with ``convert.export`` into
``benchmarks/torch_reference.py``); outputs, losses and gradients are compared first,
then each (workload, framework, variant) runs in its own subprocess (so its peak memory is
its own), and the runs of one workload are stepped in interleaved rounds, so that they
all see the same load on a shared machine. Workloads (published ``tiny`` ECG preset, reference input
``(B, 1, 12, 2500)``; ResNet at 210 px):

- ``encoder_fwd``  ECG encoder inference (attention pooling);
- ``mae_step``     MAE train step: forward + backward + AdamW (JAX: jitted, donated state);
- ``resnet_fwd``   ResNet inference (eval BatchNorm);
- ``simclr_step``  SimCLR train step: two views, NT-Xent, Adam with L2 weight decay.

JAX attention variants: ``auto`` (the model default: ``blocked`` on CPU), ``softmax``
(the plain XLA softmax, ``model.attention=xla``), ``dpa`` (``jax.nn.dot_product_attention``),
``blocked`` (``jaxecg.models.attention``); ``auto`` and ``softmax`` run by default. Torch:
``explicit`` (the reference's timm 0.6 code) and ``sdpa`` (``F.scaled_dot_product_attention``).
Reported: median seconds per step over the rounds after warm-up (the first call, i.e. JAX
compile time, is printed apart), throughput, the speed ratio against the torch reference
(median of per-round ratios), and each process's peak RSS up to the end of the first call
and while stepping.

    python -m benchmarks.bench_models [--quick] [--workloads encoder_fwd,mae_step] ...

Run from the repository root (``-m``), with nothing else loading the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

WORKLOADS = ("encoder_fwd", "mae_step", "resnet_fwd", "simclr_step")
KINDS = {
    "encoder_fwd": "ecg_encoder",
    "mae_step": "mae",
    "resnet_fwd": "cmr_encoder",
    "simclr_step": "simclr",
}
ATTENTION_WORKLOADS = ("encoder_fwd", "mae_step")
JAX_ATTENTION = ("auto", "softmax", "dpa", "blocked")  # auto: the model default (blocked on CPU)
TORCH_ATTENTION = ("explicit", "sdpa")
TORCH_REFERENCE = "explicit"  # what the reference's timm fork runs
IMAGE_SIZE = 210  # the reference's CMR img_size
ECG_TIME = 2500  # the reference's ECG length: 12 leads x 2500 samples, 300 patches of 100
ECG_PATCH = 100
CONFIG_ATTENTION = "auto"  # jax_model variant: the backend the model config picks
MAE_OPTIM = {"lr": 1.5e-4, "b1": 0.9, "b2": 0.95, "weight_decay": 0.05}  # reference MAE AdamW
SIMCLR_OPTIM = {"lr": 3e-3, "weight_decay": 1e-4}  # reference SimCLR Adam (L2 on the gradient)


@dataclasses.dataclass(frozen=True)
class Job:
    """One timed run: a workload on one framework with one attention implementation."""

    workload: str
    framework: str  # "jax" | "torch"
    attention: str  # a JAX_ATTENTION or TORCH_ATTENTION name; "-" for the ResNets
    batch: int
    warmup: int
    threads: int
    weights: str  # directory with the exported weights and configs
    xla_flags: str = ""  # appended to XLA_FLAGS of a JAX run

    @property
    def label(self) -> str:
        """The variant as the table shows it: attention, plus XLA flags if any."""
        return f"{self.attention} {self.xla_flags}".strip()


# ---------------------------------------------------------------------------------------
# Shared by both frameworks: configs, inputs, timing, memory
# ---------------------------------------------------------------------------------------


def model_config(workload: str, backbone: str, ecg_time: int = ECG_TIME) -> Any:
    """The config of the model a workload runs (imports jaxecg, not torch)."""
    from jaxecg.models import MAEConfig, ResNetConfig, SimCLRConfig, ViTConfig

    ecg = {"img_size": (1, 12, ecg_time)}
    return {
        "encoder_fwd": lambda: ViTConfig.preset("tiny", **ecg),
        "mae_step": lambda: MAEConfig.preset("tiny", **ecg),
        "resnet_fwd": lambda: ResNetConfig.preset(backbone),
        "simclr_step": lambda: SimCLRConfig.preset(backbone),
    }[workload]()


def inputs(
    workload: str,
    batch: int,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    ecg_time: int = ECG_TIME,
) -> dict[str, np.ndarray]:
    """Deterministic inputs in the reference's layouts: ECG ``(B, 1, 12, T)``, images NCHW."""
    rng = np.random.default_rng(seed)
    if workload in ("encoder_fwd", "mae_step"):
        arrays = {"x": rng.standard_normal((batch, 1, 12, ecg_time), dtype=np.float32)}
        if workload == "mae_step":
            arrays["noise"] = rng.random((batch, 12 * ecg_time // ECG_PATCH), dtype=np.float32)
        return arrays
    shape = (batch, 3, image_size, image_size)
    if workload == "resnet_fwd":
        return {"x": rng.standard_normal(shape, dtype=np.float32)}
    return {
        "x0": rng.standard_normal(shape, dtype=np.float32),
        "x1": rng.standard_normal(shape, dtype=np.float32),
    }


def rss_mib(field: str = "VmRSS") -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) resident set size of this process.

    Read from ``/proc/self/status`` (Linux): unlike ``ru_maxrss``, the peak is that of this
    executable only, not of the parent it was forked from.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Restart ``VmHWM`` from the current RSS (Linux >= 4.0: write 5 to ``clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def serve(step: Callable[[], Any], job: Job) -> None:
    """Worker loop: first call and warm-up, then one timed ``step`` per ``step`` line on stdin.

    ``step`` must block until its result exists and return it (features, or the loss before
    the update). Protocol on stdout: ``READY {first_s, first_rss_mib, output}`` (``output``:
    the first call's result, for the cross-framework check at full batch), then ``TIME seconds`` per step, and ``RESULT {step_rss_mib}`` on
    ``done``. Memory (process RSS, MiB): ``first_rss_mib`` is the peak up to the end of the
    first call (imports, weights, inputs, JAX compilation, one step); ``step_rss_mib`` the
    peak while stepping afterwards (reset after the first call), i.e. what a long run holds.
    """
    start = time.perf_counter()
    output = np.asarray(step(), np.float64)
    first = time.perf_counter() - start
    first_rss = rss_mib("VmHWM")
    reset_peak_rss()
    for _ in range(job.warmup):
        step()
    ready = {"first_s": first, "first_rss_mib": first_rss, "output": output.tolist()}
    print("READY " + json.dumps(ready), flush=True)
    for command in iter(sys.stdin.readline, ""):
        if command.strip() == "done":
            break
        start = time.perf_counter()
        step()
        print(f"TIME {time.perf_counter() - start}", flush=True)
    print("RESULT " + json.dumps({"step_rss_mib": rss_mib("VmHWM")}), flush=True)


# ---------------------------------------------------------------------------------------
# JAX side (no torch import in these processes)
# ---------------------------------------------------------------------------------------


def jax_attention(name: str) -> Callable[..., Any]:
    import jax

    from jaxecg.models import softmax_attention
    from jaxecg.models.attention import blocked_attention

    return {
        "softmax": softmax_attention,
        "dpa": jax.nn.dot_product_attention,
        "blocked": blocked_attention,
    }[name]


def jax_model(workload: str, config: Any, variant: str) -> Any:
    """The Flax model; ``variant``: a JAX_ATTENTION kernel, or CONFIG_ATTENTION (the config's)."""
    from jaxecg.models import MAE, CMREncoder, ECGEncoder, SimCLR

    if workload in ("resnet_fwd", "simclr_step"):
        return CMREncoder(config) if workload == "resnet_fwd" else SimCLR(config)
    attention_fn = None if variant == CONFIG_ATTENTION else jax_attention(variant)
    return (ECGEncoder if workload == "encoder_fwd" else MAE)(config, attention_fn=attention_fn)


def jax_optimizer(workload: str) -> Any:
    import optax

    if workload == "mae_step":
        o = MAE_OPTIM
        return optax.adamw(o["lr"], b1=o["b1"], b2=o["b2"], weight_decay=o["weight_decay"])
    # torch Adam's weight_decay adds wd * p to the gradient before the moments.
    return optax.chain(
        optax.add_decayed_weights(SIMCLR_OPTIM["weight_decay"]), optax.adam(SIMCLR_OPTIM["lr"])
    )


def jax_loss_fn(workload: str, model: Any) -> Callable[..., Any]:
    """``(params, batch_stats, data) -> (loss, new batch_stats)`` of a train workload."""
    from jaxecg.losses import nt_xent

    if workload == "mae_step":

        def mae_loss(params: Any, batch_stats: Any, data: dict) -> tuple[Any, Any]:
            out = model.apply({"params": params}, data["x"], noise=data["noise"], train=True)
            return out.loss, batch_stats

        return mae_loss

    def simclr_loss(params: Any, batch_stats: Any, data: dict) -> tuple[Any, Any]:
        # Two forward passes, as the reference: each view's BatchNorm sees only that view.
        z0, upd = model.apply(
            {"params": params, "batch_stats": batch_stats},
            data["x0"],
            train=True,
            mutable=["batch_stats"],
        )
        z1, upd = model.apply(
            {"params": params, "batch_stats": upd["batch_stats"]},
            data["x1"],
            train=True,
            mutable=["batch_stats"],
        )
        return nt_xent(z0, z1, 0.1)[0], upd["batch_stats"]

    return simclr_loss


def jax_data(workload: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Device arrays in the Flax layouts (images NCHW -> NHWC)."""
    import jax.numpy as jnp

    if workload in ("resnet_fwd", "simclr_step"):
        return {k: jnp.asarray(v.transpose(0, 2, 3, 1)) for k, v in arrays.items()}
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def load_flax(path: Path) -> dict[str, Any]:
    from flax import traverse_util

    with np.load(path) as flat:
        return traverse_util.unflatten_dict({tuple(k.split("/")): flat[k] for k in flat.files})


class JaxStep:
    """A workload's jitted function on fixed data, compiled ahead of time on the first call.

    Forwards return the features. Train steps return the loss before the update and keep
    the updated state (params, BatchNorm statistics, optimiser state; donated). After the
    first call, ``compiled`` is the XLA executable, e.g. for its ``cost_analysis()``.
    """

    def __init__(
        self, fn: Any, state: list[Any], data: dict[str, Any], train: bool, resnet: bool
    ) -> None:
        self.fn, self.state, self.data, self.train = fn, state, data, train
        self.resnet = resnet  # which jaxecg compiler options apply
        self.compiled: Any = None

    def __call__(self) -> Any:
        if self.compiled is None:
            from jaxecg.compile_options import compiler_options

            # The options jaxecg's own steps compile with (train loop, embed, evaluate).
            lowered = self.fn.lower(*self.state, self.data)
            options = compiler_options(resnet=self.resnet)
            self.compiled = lowered.compile(compiler_options=options)
            from jaxecg.memory import release_free_heap

            release_free_heap()  # as the train loop does after compiling its step
        out = self.compiled(*self.state, self.data)
        if self.train:
            *self.state, out = out
        return out.block_until_ready()


def jax_runner(workload: str, model: Any, variables: dict, data: dict[str, Any]) -> JaxStep:
    """The timed JAX step of ``workload``; a train step donates (consumes) ``variables``."""
    import functools

    import jax
    import jax.numpy as jnp

    if workload in ("encoder_fwd", "resnet_fwd"):
        forward = jax.jit(lambda v, d: model.apply(v, d["x"]))
        return JaxStep(forward, [variables], data, train=False, resnet=workload == "resnet_fwd")

    loss_fn = jax_loss_fn(workload, model)
    tx = jax_optimizer(workload)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(params: Any, batch_stats: Any, opt_state: Any, d: dict) -> tuple:
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, d
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    state = [params, batch_stats, tx.init(params)]
    return JaxStep(train_step, state, data, train=True, resnet=workload == "simclr_step")


def jax_step(job: Job) -> Callable[[], Any]:
    """The timed JAX callable of a job (compiled on its first call)."""
    import jax
    import jax.numpy as jnp

    config = model_config(job.workload, json.loads(Path(job.weights, "backbone").read_text()))
    model = jax_model(job.workload, config, job.attention)
    variables = jax.tree.map(jnp.asarray, load_flax(Path(job.weights, f"{job.workload}.flax.npz")))
    return jax_runner(
        job.workload, model, variables, jax_data(job.workload, inputs(job.workload, job.batch))
    )


# ---------------------------------------------------------------------------------------
# torch side (no JAX import in these processes)
# ---------------------------------------------------------------------------------------


def torch_model(workload: str, config: dict, variant: str) -> Any:
    from benchmarks import torch_reference as ref

    if workload == "encoder_fwd":
        return ref.ecg_encoder(config, variant)
    if workload == "mae_step":
        return ref.mae(config, variant)
    if workload == "resnet_fwd":
        return ref.ResNetEncoder(config["backbone"])
    return ref.SimCLR(config["encoder"]["backbone"], config["projection_dim"])


def torch_weights(workload: str, weights: str | Path, attention: str) -> Any:
    """The torch model of ``workload`` with the weights ``save_weights`` exported (on the CPU)."""
    from benchmarks import torch_reference as ref

    config = json.loads(Path(weights, f"{workload}.config.json").read_text())
    with np.load(Path(weights, f"{workload}.torch.npz")) as arrays:
        return ref.load_arrays(torch_model(workload, config, attention), dict(arrays))


def torch_runner(
    workload: str,
    model: Any,
    data: dict[str, Any],
    autocast: Any = None,
    compile_backend: str | None = None,
) -> Callable[[], Any]:
    """The timed torch step of ``workload`` on the device of ``data``; blocks until done.

    ``autocast``: a dtype for ``torch.autocast`` (AMP) around the forward and loss, the
    backward outside it as torch recommends. ``compile_backend``: run the model through
    ``torch.compile`` (static shapes) with that backend; the optimiser stays eager.
    """
    import contextlib

    import torch

    from benchmarks import torch_reference as ref

    device = next(iter(data.values())).device

    def amp() -> contextlib.AbstractContextManager:
        if autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def compiled(module: torch.nn.Module) -> Callable[..., Any]:
        if compile_backend is None:
            return module
        return torch.compile(module, backend=compile_backend, dynamic=False)

    if workload in ("encoder_fwd", "resnet_fwd"):
        forward = compiled(model.eval())

        def infer() -> torch.Tensor:
            with torch.inference_mode(), amp():
                out = forward(data["x"])
            sync()
            return out

        return infer

    forward = compiled(model.train())
    params = [p for p in model.parameters() if p.requires_grad]
    if workload == "mae_step":
        o = MAE_OPTIM
        opt = torch.optim.AdamW(
            params, lr=o["lr"], betas=(o["b1"], o["b2"]), weight_decay=o["weight_decay"]
        )
    else:
        opt = torch.optim.Adam(params, **SIMCLR_OPTIM)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with amp():
            if workload == "mae_step":
                loss = forward(data["x"], data["noise"])[0]
            else:
                loss = ref.nt_xent(forward(data["x0"]), forward(data["x1"]), 0.1)
        loss.backward()
        opt.step()
        sync()
        return loss.detach()

    return step


def torch_step(job: Job) -> Callable[[], Any]:
    """The timed torch callable of a job."""
    import torch

    torch.set_num_threads(job.threads)
    data = {k: torch.from_numpy(v) for k, v in inputs(job.workload, job.batch).items()}
    model = torch_weights(job.workload, job.weights, job.attention)
    return torch_runner(job.workload, model, data)


# ---------------------------------------------------------------------------------------
# Parity: same weights, same inputs, both frameworks (this process imports both)
# ---------------------------------------------------------------------------------------


PARITY_BATCH = {"encoder_fwd": 2, "mae_step": 2, "resnet_fwd": 2, "simclr_step": 4}
# Train-mode BatchNorm over 2 samples makes SimCLR's gradients ill-conditioned (fp32 torch is
# then as far from fp64 as JAX is); 4 pairs of 96 px images keep the check meaningful.
PARITY_IMAGE_SIZE = {"resnet_fwd": IMAGE_SIZE, "simclr_step": 96}


def _diff(a: Any, b: Any) -> str:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return f"max|diff| {np.abs(a - b).max():.2e} (max|value| {np.abs(b).max():.2e})"


def _grad_diff(j_grads: dict[str, Any], t_grads: dict[str, np.ndarray]) -> str:
    """The worst tensor by relative error ``max|diff| / max|torch grad|``."""
    missing = sorted(set(t_grads) - set(j_grads))
    if missing:
        raise RuntimeError(f"gradients missing on the JAX side: {missing}")
    rel = {
        k: np.abs(j_grads[k].numpy() - g).max() / max(np.abs(g).max(), 1e-30)
        for k, g in t_grads.items()
    }
    worst = max(rel, key=rel.get)
    return f"worst {worst}: {_diff(j_grads[worst].numpy(), t_grads[worst])}, rel {rel[worst]:.1e}"


def save_weights(workload: str, config: Any, weights: Path) -> tuple[dict, dict]:
    """Init the Flax model of ``config``, export it, save both sides; -> ``(variables, state)``."""
    from flax import traverse_util

    from convert import export
    from convert.targets import binding

    kind = KINDS[workload]
    variables = binding(kind).init(config)
    state = {k: v.numpy() for k, v in export(variables, kind, config).items()}
    flat = traverse_util.flatten_dict(variables)
    np.savez(
        weights / f"{workload}.flax.npz", **{"/".join(k): np.asarray(v) for k, v in flat.items()}
    )
    np.savez(weights / f"{workload}.torch.npz", **state)
    (weights / f"{workload}.config.json").write_text(json.dumps(config.to_dict()))
    return variables, state


def check_parity(
    workload: str,
    config: Any,
    variables: dict,
    state: dict,
    jax_variants: list[str],
    torch_variants: list[str],
) -> list[str]:
    """Same weights and inputs in both frameworks: features, or loss and every gradient."""
    import jax
    import torch

    from benchmarks import torch_reference as ref
    from convert import export

    arrays = inputs(
        workload,
        PARITY_BATCH[workload],
        seed=1,
        image_size=PARITY_IMAGE_SIZE.get(workload, IMAGE_SIZE),
    )
    data = jax_data(workload, arrays)
    tdata = {k: torch.from_numpy(v) for k, v in arrays.items()}
    attention = workload in ATTENTION_WORKLOADS
    jax_variants = jax_variants if attention else ["-"]
    t_models = {
        v: ref.load_arrays(torch_model(workload, config.to_dict(), v), state)
        for v in {TORCH_REFERENCE, *(torch_variants if attention else [])}
    }
    lines = []
    if workload in ("encoder_fwd", "resnet_fwd"):
        with torch.inference_mode():
            outs = {v: m.eval()(tdata["x"]).numpy() for v, m in t_models.items()}
        expected = outs[TORCH_REFERENCE]
        lines += [
            f"torch {v} vs torch {TORCH_REFERENCE} features: {_diff(o, expected)}"
            for v, o in outs.items()
            if v != TORCH_REFERENCE
        ]
        for v in jax_variants:
            model = jax_model(workload, config, v)
            out = jax.jit(lambda vs, d, m=model: m.apply(vs, d["x"]))(variables, data)
            lines.append(f"jax {v} vs torch features: {_diff(out, expected)}")
        return [f"{workload}: {line}" for line in lines]

    t_ref = t_models[TORCH_REFERENCE].train()
    if workload == "mae_step":
        loss_t = t_ref(tdata["x"], tdata["noise"])[0]
    else:
        loss_t = ref.nt_xent(t_ref(tdata["x0"]), t_ref(tdata["x1"]), 0.1)
    loss_t.backward()
    t_grads = {k: p.grad.numpy() for k, p in t_ref.named_parameters() if p.grad is not None}
    for v in jax_variants:
        loss_fn = jax_loss_fn(workload, jax_model(workload, config, v))
        (loss_j, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
            variables["params"], variables.get("batch_stats", {}), data
        )
        # export() maps the gradient tree to torch names, as it does the weights.
        j_grads = export({**variables, "params": grads}, KINDS[workload], config)
        lines.append(f"jax {v} vs torch loss: {_diff(loss_j, loss_t.item())}")
        lines.append(f"jax {v} vs torch grads: {_grad_diff(j_grads, t_grads)}")
    return [f"{workload}: {line}" for line in lines]


# ---------------------------------------------------------------------------------------
# Orchestration and the table
# ---------------------------------------------------------------------------------------


class Worker:
    """A worker subprocess holding one job's compiled step, driven one step at a time."""

    def __init__(self, job: Job, log_dir: Path) -> None:
        self.job = job
        env = dict(os.environ)
        if job.xla_flags:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {job.xla_flags}".strip()
        self._log = log_dir / f"{job.workload}-{job.framework}-{len(os.listdir(log_dir))}.log"
        with open(self._log, "w") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.bench_models", "--worker",
                 json.dumps(dataclasses.asdict(job))],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        self.result: dict[str, Any] = {
            **dataclasses.asdict(job),
            "variant": job.label,
            "times_s": [],
        }
        self.result.update(self._read("READY"))

    def _read(self, tag: str) -> Any:
        line = self._proc.stdout.readline()
        if not line.startswith(tag + " "):
            self.close()
            raise RuntimeError(
                f"{self.job.framework} {self.job.workload} {self.job.label} failed:\n"
                f"{line}{self._log.read_text()[-3000:]}"
            )
        return json.loads(line[len(tag) + 1 :])

    def step(self) -> float:
        self._proc.stdin.write("step\n")
        self._proc.stdin.flush()
        seconds = self._read("TIME")
        self.result["times_s"].append(seconds)
        return seconds

    def finish(self) -> dict[str, Any]:
        self._proc.stdin.write("done\n")
        self._proc.stdin.flush()
        self.result.update(self._read("RESULT"))
        self._proc.wait()
        self.result["median_s"] = statistics.median(self.result["times_s"])
        return self.result

    def close(self) -> None:
        """Kill the worker if it is still running (after an error elsewhere)."""
        if self._proc.poll() is None:
            self._proc.kill()


def bench_workload(jobs: list[Job], repeats: int, log_dir: Path) -> list[dict]:
    """Start (and warm up) every job of one workload, then step them in interleaved rounds.

    Each round steps every worker once, in an order rotated per round, so all variants see
    the same machine load; ``speed_vs_ref`` is the median over rounds of the torch
    reference's step time divided by this run's (paired, so slow load drifts cancel).
    """
    workers = []
    try:
        for job in jobs:
            workers.append(Worker(job, log_dir))
            print(f"{job.workload} {job.framework} {job.label}: first call "
                  f"{workers[-1].result['first_s']:.2f} s", flush=True)  # fmt: skip
        for r in range(repeats):
            for w in workers[r % len(workers) :] + workers[: r % len(workers)]:
                w.step()
        results = [w.finish() for w in workers]
    finally:
        for w in workers:
            w.close()
    ref = next(
        (
            r
            for r in results
            if r["framework"] == "torch" and r["attention"] in (TORCH_REFERENCE, "-")
        ),
        None,
    )
    for r in results:
        r["speed_vs_ref"] = (
            statistics.median(a / b for a, b in zip(ref["times_s"], r["times_s"]))
            if ref else float("nan")
        )  # fmt: skip
        r["step_rss_vs_ref"] = r["step_rss_mib"] / ref["step_rss_mib"] if ref else float("nan")
        r["max_diff_vs_ref"] = (
            float(np.abs(np.subtract(r["output"], ref["output"])).max()) if ref else float("nan")
        )
        print(f"{r['workload']} {r['framework']} {r['variant']}: median {r['median_s']:.3f} s, "
              f"{r['speed_vs_ref']:.2f}x the torch reference, first output max|diff| "
              f"{r['max_diff_vs_ref']:.1e} vs it", flush=True)  # fmt: skip
    for r in results:
        del r["output"]  # compared above; not worth keeping in the JSON
    return results


def table(results: list[dict[str, Any]]) -> str:
    """Markdown, one row per run; speed and stepping memory relative to the torch reference."""
    head = (
        "| workload | batch | framework | variant | first call s | median s/step | samples/s "
        "| speed vs torch ref | peak RSS to 1st call MiB | peak RSS stepping MiB "
        "| stepping RSS vs torch ref | max abs diff vs torch ref |"
    )
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        rows.append(
            f"| {r['workload']} | {r['batch']} | {r['framework']} | {r['variant']} | "
            f"{r['first_s']:.2f} | {r['median_s']:.3f} | {r['batch'] / r['median_s']:.1f} | "
            f"{r['speed_vs_ref']:.2f}x | {r['first_rss_mib']:.0f} | {r['step_rss_mib']:.0f} | "
            f"{r['step_rss_vs_ref']:.2f}x | {r['max_diff_vs_ref']:.1e} |"
        )
    return "\n".join(rows)


def plan(args: argparse.Namespace) -> dict[str, list[Job]]:
    """Jobs per workload: torch runs, JAX runs, then JAX runs with extra XLA flags."""
    jobs = {}
    for workload in args.workloads:
        batch = {
            "encoder_fwd": args.ecg_batch,
            "mae_step": args.ecg_batch,
            "resnet_fwd": args.image_batch,
            "simclr_step": args.simclr_batch,
        }[workload]
        attention = workload in ATTENTION_WORKLOADS
        runs = [("torch", v, "") for v in (args.torch_attention if attention else ["-"])]
        runs += [("jax", v, "") for v in (args.jax_attention if attention else ["-"])]
        default = CONFIG_ATTENTION if attention else "-"
        runs += [("jax", default, flags) for flags in args.xla_flags]
        jobs[workload] = [
            Job(workload, fw, v, batch, args.warmup, args.threads, str(args.weights), flags)
            for fw, v, flags in runs
        ]
    return jobs


def csv_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t for t in text.split(",") if t]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; expected some of {list(choices)}")
        return items

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="~1 min: batch 4, 3 rounds, encoder + ResNet forward, default attention only",
    )
    parser.add_argument("--workloads", type=csv_list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument(
        "--jax-attention", type=csv_list(JAX_ATTENTION), default=["auto", "softmax"]
    )
    parser.add_argument(
        "--torch-attention", type=csv_list(TORCH_ATTENTION), default=list(TORCH_ATTENTION)
    )
    parser.add_argument("--ecg-batch", type=int, default=16)
    parser.add_argument("--image-batch", type=int, default=16)
    parser.add_argument("--simclr-batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--backbone", choices=("resnet18", "resnet50"), default="resnet18")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch.set_num_threads (XLA's CPU pool uses every core)",
    )
    parser.add_argument(
        "--xla-flags",
        action="append",
        default=[],
        help="extra JAX runs (default attention) with these flags appended to XLA_FLAGS; "
        "repeatable, one set of flags per use",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        job = Job(**json.loads(args.worker))
        serve(jax_step(job) if job.framework == "jax" else torch_step(job), job)
        return
    if args.quick:
        args.ecg_batch = args.image_batch = args.simclr_batch = 4
        args.warmup, args.repeats = 1, 3
        args.workloads = [w for w in args.workloads if w in ("encoder_fwd", "resnet_fwd")]
        args.jax_attention, args.torch_attention = ["auto"], [TORCH_REFERENCE]

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"torch threads {args.threads}; XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}'",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as weights:
        args.weights = weights
        start = time.perf_counter()
        Path(weights, "backbone").write_text(json.dumps(args.backbone))
        for workload in args.workloads:
            config = model_config(workload, args.backbone)
            variables, state = save_weights(workload, config, Path(weights))
            for line in check_parity(
                workload, config, variables, state, args.jax_attention, args.torch_attention
            ):
                print(line, flush=True)
        print(f"# parity checks took {time.perf_counter() - start:.0f} s", flush=True)
        results = []
        for workload, jobs in plan(args).items():
            results += bench_workload(jobs, args.repeats, Path(weights))
            print(f"# load average {os.getloadavg()[0]:.2f}", flush=True)
    print()
    print(table(results))
    print(f"\n# load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
