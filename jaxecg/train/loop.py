"""The training loop: jit-compiled data-parallel steps, logging, evaluation, checkpoints.

Stages, in order: set-up (processes, mesh, task, run directory) → data (one
Grain pipeline per process, each holding its slice of every global batch) →
state (init or pretrained weights, optimiser) → resume → compiled steps → loop.
The batch is sharded over the ``data`` mesh axis and everything else is
replicated, so under ``jit`` BatchNorm and NT-Xent see the global batch, as
on the reference's single GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.sharding import Mesh

from jaxecg.compile_options import compiler_options
from jaxecg.data import IndexSource, make_loader
from jaxecg.data.batches import padded_batches, valid_rows
from jaxecg.errors import TrainingError
from jaxecg.interrupts import Interrupted, StopRequest, stop_requests
from jaxecg.memory import release_free_heap
from jaxecg.train import mesh as mesh_lib
from jaxecg.train import on_device, report
from jaxecg.train.checkpoint import Checkpointer, abstract_like
from jaxecg.train.config import ExperimentConfig
from jaxecg.train.resume import Resume, no_debris, resume_step, truncate_log
from jaxecg.train.tasks import get_task
from jaxecg.train.tasks.base import Batch, PyTree, Task
from jaxecg.weights import CMR_KINDS, TASK_MODEL_KINDS

# Offset separating the evaluation rng stream from the training steps' streams.
_EVAL_STREAM = 2**31 - 1


class NonFiniteLossError(TrainingError):
    """The training loss became NaN/inf; the run stopped without checkpointing that state."""


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: ``step`` (updates done), params, BN statistics, optimiser.

    ``first_bad_step`` is the number of the first step whose loss was non-finite (0: none
    yet). It is set on device, inside the step, so the loop can detect a NaN without
    fetching the loss after every step; from that step on the step leaves the rest of the
    state as it was, so whatever the loop saves is the last good state.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    first_bad_step: jax.Array


# ---------------------------------------------------------------------------- steps


def _micro_batches(batch: Batch, count: int) -> Batch:
    """``(B, ...)`` → ``(count, B / count, ...)``; micro-batch ``k`` holds rows ``k, k + count, ...``.

    Strided rather than contiguous: each device's block of the sharded batch then holds
    its share of every micro-batch, so slicing one out moves no data between devices.
    """
    return jax.tree.map(
        lambda x: x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1), batch
    )


def make_train_step(
    task: Task,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    grad_accum: int = 1,
):
    """``(state, batch, seed_key) -> (state, metrics)``: one optimiser update (not jitted).

    The step's rng is ``fold_in(seed_key, state.step)``: a function of the step
    number alone, so a resumed run draws exactly what the uninterrupted one did.
    A non-finite objective or loss records the step in ``first_bad_step`` and keeps the
    rest of the state; once it is recorded no later step changes the state either.

    ``grad_accum=N`` runs the objective on ``N`` micro-batches in a ``lax.scan`` and
    applies the mean of their gradients (and reports the mean of their metrics): the
    same update as one pass over the whole batch for an objective that is a mean over
    examples and deterministic given them. Micro-batch ``k`` draws its randomness
    (masks, augmentation, dropout) from ``fold_in(rng, k)``, and BatchNorm normalises
    each micro-batch by its own statistics, the running ones updated once per micro-batch,
    as PyTorch does when accumulating gradients.
    """

    def objective(params: PyTree, batch_stats: PyTree, batch: Batch, rng: jax.Array):
        # Mixed precision is the model's: it computes in its ``dtype`` from these fp32
        # parameters, so the gradients come back fp32.
        value, (batch_stats, metrics) = task.loss(params, batch_stats, batch, rng)
        metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
        return value.astype(jnp.float32), (batch_stats, metrics)

    gradient = jax.value_and_grad(objective, has_aux=True)

    def accumulated(params: PyTree, batch_stats: PyTree, batch: Batch, rng: jax.Array):
        """``gradient``'s result averaged over ``grad_accum`` micro-batches (sums carried,
        so memory holds one gradient, not one per micro-batch)."""
        micro = _micro_batches(batch, grad_accum)

        def body(carry, inputs):
            sums, stats = carry
            k, mb = inputs
            (value, (stats, metrics)), grads = gradient(
                params, stats, mb, jax.random.fold_in(rng, k)
            )
            sums = jax.tree.map(jnp.add, sums, (value, metrics, grads))
            return (sums, stats), None

        first = jax.tree.map(lambda x: x[0], micro)
        (value, (_, metrics)), grads = jax.eval_shape(gradient, params, batch_stats, first, rng)
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (value, metrics, grads))
        (sums, stats), _ = jax.lax.scan(body, (zeros, batch_stats), (jnp.arange(grad_accum), micro))
        value, metrics, grads = jax.tree.map(lambda x: x / grad_accum, sums)
        return (value, (stats, metrics)), grads

    def step(state: TrainState, batch: Batch, seed_key: jax.Array):
        rng = jax.random.fold_in(seed_key, state.step)
        compute = gradient if grad_accum == 1 else accumulated
        (value, (batch_stats, metrics)), grads = compute(
            state.params, state.batch_stats, batch, rng
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updated = TrainState(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            # Running statistics stay fp32 whatever the compute dtype.
            batch_stats=jax.tree.map(
                lambda new, old: new.astype(old.dtype), batch_stats, state.batch_stats
            ),
            opt_state=opt_state,
            first_bad_step=state.first_bad_step,
        )
        metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        finite = jnp.isfinite(value) & jnp.isfinite(metrics["loss"])
        good_so_far = state.first_bad_step == 0
        new_state = jax.tree.map(
            lambda new, old: jnp.where(finite & good_so_far, new, old), updated, state
        )
        first_bad = jnp.where(good_so_far & ~finite, state.step + 1, state.first_bad_step)
        return new_state.replace(first_bad_step=first_bad.astype(jnp.int32)), metrics

    return step


def make_eval_step(task: Task):
    """``(state, batch, rng) -> per-example outputs`` (not jitted)."""

    def step(state: TrainState, batch: Batch, rng: jax.Array):
        outputs = task.eval_outputs(state.params, state.batch_stats, batch, rng)
        return {
            k: v.astype(jnp.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v
            for k, v in outputs.items()
        }

    return step


def new_state(tx: optax.GradientTransformation, variables: dict[str, PyTree]) -> TrainState:
    """Step 0 of a run from freshly initialised (or pretrained) ``variables``."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(variables["params"]),
        first_bad_step=jnp.zeros((), jnp.int32),
    )


# ---------------------------------------------------------------------------- data


def _eval_loader(dataset: Any, *, global_batch: int, max_batches: int | None, mesh: Any):
    """One pass over every eval record as ``(batch, valid)``: the last batch padded and
    masked (:func:`~jaxecg.data.batches.padded_batches`), optionally capped at ``max_batches``."""
    sharding = mesh_lib.batch_sharding(mesh)
    return padded_batches(dataset, global_batch, sharding=sharding, max_batches=max_batches)


# ---------------------------------------------------------------------------- logging


class _MetricsLog:
    """``metrics.jsonl`` (+ TensorBoard via tensorboardX) of this process.

    Process 0 writes ``metrics.jsonl`` and TensorBoard events; other processes
    write ``metrics.process<i>.jsonl`` so multi-host runs can be cross-checked.
    tensorboardX is used because it writes standard event files without
    depending on TensorFlow. Both are cut back to ``start`` (the restored step, 0 for
    a fresh run), so a resumed run logs every step once.
    """

    def __init__(self, workdir: Path, start: int) -> None:
        index = jax.process_index()
        name = "metrics.jsonl" if index == 0 else f"metrics.process{index}.jsonl"
        truncate_log(workdir / name, start)
        self._file = (workdir / name).open("a")
        self._tb = None
        if index == 0:
            from tensorboardX import SummaryWriter

            # purge_step: TensorBoard hides the earlier events from this step on.
            self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=start + 1)

    def write(self, step: int, record: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **record}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                tag = key if "/" in key else f"train/{key}"
                self._tb.add_scalar(tag, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


# ---------------------------------------------------------------------------- the run


def _every(interval: int | None, default: int) -> int:
    """Steps between events: ``None`` → ``default`` (one epoch), ``0`` → never."""
    return default if interval is None else interval


def _fetch(tree: PyTree) -> PyTree:
    """The one device→host transfer of the loop's metrics and NaN flag (at sync points only)."""
    return jax.device_get(tree)


def evaluate(
    task: Task, eval_step: Any, state: TrainState, batches: Any, rng: jax.Array
) -> dict[str, float]:
    """Task metrics over all eval ``(batch, valid)`` pairs (outputs gathered to every host,
    padding rows dropped)."""
    chunks: dict[str, list[np.ndarray]] = {}
    for index, (batch, valid) in enumerate(batches):
        outputs = eval_step(state, batch, jax.random.fold_in(rng, index))
        for key, value in outputs.items():
            chunks.setdefault(key, []).append(valid_rows(mesh_lib.to_host(value), valid))
    return task.summarize({k: np.concatenate(v) for k, v in chunks.items()})


@dataclasses.dataclass
class Run:
    """A set-up run: everything :func:`train` loops over (also handy in tests and notebooks).

    ``train_step(state, batch, seed_key)`` and ``eval_step(state, batch, rng)`` are the
    compiled steps (the train step donates ``state``); ``train_iter`` yields sharded global
    batches (with ``data.on_device``: ``{"index": (B,)}``, rows of ``resident``, the split
    held on the devices, that ``train_step`` gathers); ``eval_batches()`` starts a fresh
    pass over the eval split, ``(batch, valid)`` pairs covering every record.
    """

    cfg: ExperimentConfig
    task: Task
    mesh: Mesh
    state: TrainState
    train_iter: Any
    eval_batches: Callable[[], Any]
    steps_per_epoch: int
    total_steps: int
    seed_key: jax.Array
    train_step: Callable[..., Any]
    eval_step: Callable[..., Any]
    resident: on_device.Resident | None = None


def setup(
    cfg: ExperimentConfig, *, mesh: Mesh | None = None, restore: Checkpointer | None = None
) -> Run:
    """Build task, data, state and compiled steps on ``mesh`` (default: all devices).

    With ``restore`` the state and the input position come from its newest checkpoint
    (nothing is initialised); otherwise the state is initialised, from
    ``cfg.pretrained_weights`` when given. Errors on a batch size the devices cannot
    split come before anything is built or compiled.
    """
    mesh = mesh_lib.make_mesh() if mesh is None else mesh
    tcfg = cfg.train
    mesh_lib.check_batch_size(tcfg.batch_size, mesh, micro_batches=tcfg.grad_accum)
    eval_batch = tcfg.eval_batch_size or tcfg.batch_size
    mesh_lib.check_batch_size(eval_batch, mesh, what="train.eval_batch_size")
    task = get_task(cfg.task).build(cfg)
    replicated = mesh_lib.replicated(mesh)

    # --- data: per-process shards of every global batch, assembled into sharded arrays;
    # with data.on_device the batches are record indices into the split held on the devices
    train_set, eval_set = task.datasets()
    dcfg = cfg.data
    train_iter = make_loader(
        IndexSource(len(train_set)) if dcfg.on_device else train_set,
        batch_size=tcfg.batch_size // jax.process_count(),
        seed=dcfg.seed,
        num_epochs=None,
        sharding=mesh_lib.batch_sharding(mesh),
    )
    resident = None
    if dcfg.on_device:
        resident = on_device.load_split(
            train_set,
            mesh,
            on_device_dtype=dcfg.on_device_dtype,
            progress=tcfg.progress_bar and jax.process_index() == 0,
        )

    def eval_batches():
        return _eval_loader(
            eval_set, global_batch=eval_batch, max_batches=tcfg.eval_batches, mesh=mesh
        )

    # --- state: init (or pretrained weights) and optimiser, laid out by train.param_sharding
    seed_key = jax.random.PRNGKey(tcfg.seed)
    init_args = (jax.random.fold_in(seed_key, _EVAL_STREAM - 1), next(iter(eval_batches()))[0])
    abstract_variables = jax.eval_shape(task.init_variables, *init_args)
    variable_shardings = mesh_lib.state_shardings(abstract_variables, mesh, tcfg.param_sharding)
    if restore is not None:
        # Shapes only: the restore overwrites every value, so nothing is initialised or compiled.
        variables = abstract_variables
    else:
        variables = jax.jit(task.init_variables, out_shardings=variable_shardings)(*init_args)
        if cfg.pretrained_weights:
            variables = jax.device_put(
                task.load_pretrained(variables, cfg.pretrained_weights), variable_shardings
            )
    tx, schedule, total_steps = task.optimizer(
        variables["params"], steps_per_epoch=train_iter.steps_per_epoch, total_steps=tcfg.steps
    )
    abstract_state = jax.eval_shape(functools.partial(new_state, tx), variables)
    state_shardings = mesh_lib.state_shardings(abstract_state, mesh, tcfg.param_sharding)
    if restore is not None:
        state, data_state, _ = restore.restore(abstract_like(abstract_state, state_shardings))
        train_iter.set_state(data_state)
    else:
        # One compiled program builds the whole state (eager tx.init compiles one op per shape).
        state = jax.jit(functools.partial(new_state, tx), out_shardings=state_shardings)(variables)

    # --- compiled steps (donated state: updated in place on device, keeping its layout)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    options = compiler_options(resnet=TASK_MODEL_KINDS[cfg.task] in CMR_KINDS)
    step = make_train_step(task, tx, schedule, grad_accum=tcfg.grad_accum)
    if resident is None:
        train_step = jax.jit(
            step,
            in_shardings=(state_shardings, batch_sharding, replicated),
            out_shardings=(state_shardings, replicated),
            donate_argnums=(0,),
            compiler_options=options,
        )
    else:
        # The gather from the resident split is part of the step's compiled program.
        gathering = jax.jit(
            on_device.gathering_step(step, mesh),
            in_shardings=(state_shardings, batch_sharding, replicated, batch_sharding),
            out_shardings=(state_shardings, replicated),
            donate_argnums=(0,),
            compiler_options=options,
        )
        train_step = on_device.with_resident(gathering, resident)
    eval_step = jax.jit(
        make_eval_step(task),
        in_shardings=(state_shardings, batch_sharding, replicated),
        compiler_options=options,
    )
    return Run(
        cfg=cfg,
        task=task,
        mesh=mesh,
        state=state,
        train_iter=train_iter,
        eval_batches=eval_batches,
        steps_per_epoch=train_iter.steps_per_epoch,
        total_steps=total_steps,
        seed_key=seed_key,
        train_step=train_step,
        eval_step=eval_step,
        resident=resident,
    )


def train(cfg: ExperimentConfig, *, resume: Resume = False) -> dict[str, Any]:
    """Run ``cfg`` to ``train.steps`` (or ``stop_after``); returns the last logged metrics.

    ``resume=True`` continues from the newest checkpoint in ``<workdir>/checkpoints``
    (model, optimiser, step and input-pipeline position) and ``"auto"`` does so when
    there is one (see :mod:`jaxecg.train.resume`). SIGINT/SIGTERM finish the step in
    flight, checkpoint it and raise :class:`~jaxecg.interrupts.Interrupted`.
    """
    mesh_lib.initialize_distributed(cfg.distributed)
    tcfg = cfg.train
    mesh_lib.check_batch_size(tcfg.batch_size, mesh_lib.make_mesh(), micro_batches=tcfg.grad_accum)
    workdir = Path(tcfg.workdir).absolute()
    owner = jax.process_index() == 0
    with stop_requests() as stop, no_debris(workdir, workdir / "checkpoints", owner=owner):
        return _train(cfg, workdir, resume, stop)


def _train(
    cfg: ExperimentConfig, workdir: Path, resume: Resume, stop: StopRequest
) -> dict[str, Any]:
    tcfg = cfg.train
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpointer(
        workdir / "checkpoints",
        keep=tcfg.keep_checkpoints,
        keep_best=tcfg.keep_best,
        best_metric=tcfg.best_metric,
        best_mode=tcfg.best_mode,
    )
    config_dict = cfg.to_dict()
    try:
        restored = resume_step(checkpoints, config_dict, resume)
        run = setup(cfg, restore=None if restored is None else checkpoints)
    except BaseException:
        checkpoints.close()
        raise
    state, train_iter = run.state, run.train_iter

    # --- loop
    eval_every = _every(tcfg.eval_every, run.steps_per_epoch)
    ckpt_every = _every(tcfg.checkpoint_every, run.steps_per_epoch)
    total_steps = run.total_steps
    end = total_steps if tcfg.stop_after is None else min(total_steps, tcfg.stop_after)
    start = int(_fetch(state.step))
    if restored is not None and jax.process_index() == 0:
        print(f"resumed from step {start} ({checkpoints.directory})", file=sys.stderr, flush=True)
    if mesh_lib.any_process(stop.requested):
        checkpoints.close()
        raise Interrupted(
            f"stopped by {stop.name} during set-up, before step {start + 1}", stop.signum
        )
    log = _MetricsLog(workdir, start)
    bar = tqdm.tqdm(
        total=total_steps,
        initial=start,
        unit="step",
        dynamic_ncols=True,
        disable=not tcfg.progress_bar or jax.process_index() != 0,
    )
    eval_rng = jax.random.fold_in(run.seed_key, _EVAL_STREAM)
    record: dict[str, Any] = {}
    tick, tick_step = time.perf_counter(), start
    step = start
    evaluated = False
    try:
        for step in range(start + 1, end + 1):
            # Dispatch only: the host runs ahead and enqueues the next steps while this one
            # computes; metrics and the NaN flag stay on device until a sync point below.
            state, metrics = run.train_step(state, next(train_iter), run.seed_key)
            if step == start + 1:
                release_free_heap()  # the step's compilation is done: drop its heap
            bar.update(1)
            stopping = mesh_lib.any_process(stop.requested)
            evaluate_now = bool(eval_every and step % eval_every == 0) or step == total_steps
            log_now = step % tcfg.log_every == 0 or evaluate_now
            save_now = (
                bool(ckpt_every and step % ckpt_every == 0)
                or evaluate_now
                or step == end
                or stopping
            )
            if not (log_now or save_now):
                continue
            host, first_bad = _fetch((metrics, state.first_bad_step))
            if first_bad:
                checkpoints.wait()
                raise NonFiniteLossError(
                    f"non-finite training loss at step {int(first_bad)}; stopped without "
                    f"saving it. Last good checkpoint: step {checkpoints.latest_step()} in "
                    f"{workdir / 'checkpoints'}"
                )
            host = {k: float(v) for k, v in host.items()}
            eval_metrics = None
            if evaluate_now:
                eval_metrics = evaluate(
                    run.task, run.eval_step, state, run.eval_batches(), eval_rng
                )
                if not evaluated:
                    release_free_heap()  # the eval step's compilation is done: drop its heap
                    evaluated = True
            if log_now:
                now = time.perf_counter()
                record = dict(host)
                record["samples_per_sec"] = (step - tick_step) * tcfg.batch_size / (now - tick)
                tick, tick_step = now, step
                record.update({f"val/{k}": v for k, v in (eval_metrics or {}).items()})
                log.write(step, record)
                if eval_metrics is not None:
                    report.evaluated(workdir, step, eval_metrics)
                bar.set_postfix(
                    loss=f"{host['loss']:.4g}",
                    lr=f"{host['lr']:.3g}",
                    samples_s=f"{record['samples_per_sec']:.1f}",
                )
            if save_now:
                checkpoints.save(
                    step,
                    state,
                    data_state=train_iter.get_state(),
                    config=config_dict,
                    metrics=eval_metrics,
                )
            if stopping:
                checkpoints.wait()
                raise Interrupted(
                    f"stopped by {stop.name} after step {step}; saved checkpoint "
                    f"{checkpoints.directory / str(step)} (continue with --resume)",
                    stop.signum,
                )
    finally:
        bar.close()
        log.close()
        checkpoints.wait()
        checkpoints.close()
    last = {"step": step, **record}
    report.finished(workdir, last)
    return last
