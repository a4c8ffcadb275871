"""Learning-rate schedules of the reference, as optax schedules of the optimiser step.

The reference configures its schedulers in *epochs* but steps them once per
batch (docs/reference.md#schedules), so its "epochs" are really steps. Here the schedule functions
speak steps, and :func:`schedule_steps` converts a config's epochs with the real
number of steps per epoch. All functions are written in ``jnp`` without fixed
dtypes so that they run inside ``jit`` (float32) and reproduce the golden
float64 tables when called under ``jax.enable_x64``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from jaxecg.errors import ConfigError


def warmup_cosine(
    base_lr: float,
    warmup_steps: int,
    max_steps: int,
    eta_min: float = 0.0,
    warmup_start_lr: float = 0.0,
) -> optax.Schedule:
    """lightning-bolts ``LinearWarmupCosineAnnealingLR`` after ``t`` calls of ``.step()``.

    Closed form of bolts' recursive ("chainable") update, including its quirks:
    warmup reaches ``base_lr`` at ``t = warmup - 1``; past ``max_steps`` the cosine
    is periodic; with ``warmup_steps == 0`` the recursion starts from
    ``warmup_start_lr`` (so it sits at ``eta_min`` for the default start of 0) until
    its restart branch at ``t = max_steps + 1`` lifts it onto the ``base_lr`` curve.
    """
    if max_steps <= warmup_steps:
        raise ConfigError(
            f"max_steps must exceed warmup_steps; got max_steps={max_steps}, "
            f"warmup_steps={warmup_steps}"
        )
    period = max_steps - warmup_steps
    # bolts divides by (warmup - 1); with warmup <= 1 no step lies strictly inside the warmup.
    warmup_slope = (base_lr - warmup_start_lr) / (warmup_steps - 1) if warmup_steps > 1 else 0.0

    def schedule(count: jnp.ndarray) -> jnp.ndarray:
        t = jnp.asarray(count)
        cosine = 0.5 * (1.0 + jnp.cos(math.pi * (t - warmup_steps) / period))
        # Before bolts' first restart (t <= max) a zero-warmup recursion scales by the start lr.
        amplitude = base_lr - eta_min
        if warmup_steps == 0:
            amplitude = jnp.where(t <= max_steps, warmup_start_lr - eta_min, base_lr - eta_min)
        annealed = eta_min + amplitude * cosine
        warm = warmup_start_lr + t * warmup_slope
        return jnp.where(t == 0, warmup_start_lr, jnp.where(t < warmup_steps, warm, annealed))

    return schedule


def cosine(base_lr: float, max_steps: int, eta_min: float = 0.0) -> optax.Schedule:
    """torch ``CosineAnnealingLR(T_max=max_steps, eta_min)`` after ``t`` steps (closed form)."""
    if max_steps <= 0:
        raise ConfigError(f"max_steps must be positive; got {max_steps}")

    def schedule(count: jnp.ndarray) -> jnp.ndarray:
        t = jnp.asarray(count)
        return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + jnp.cos(math.pi * t / max_steps))

    return schedule


def schedule_steps(
    *, warmup_epochs: float, epochs: float, steps_per_epoch: int, total_steps: int | None
) -> tuple[int, int]:
    """``(warmup_steps, max_steps)`` for a schedule configured in epochs.

    ``max_steps = epochs * steps_per_epoch`` unless ``total_steps`` overrides the
    length, in which case the warmup keeps its fraction ``warmup_epochs / epochs``
    of the run (rounded to whole steps). A configured warmup never rounds down to
    zero steps: bolts' schedule with no warmup would sit at its start lr (see
    :func:`warmup_cosine`).
    """
    if steps_per_epoch <= 0:
        raise ConfigError(f"steps_per_epoch must be positive; got {steps_per_epoch}")
    if epochs <= 0 or warmup_epochs < 0 or warmup_epochs >= epochs:
        raise ConfigError(
            f"need 0 <= warmup_epochs < epochs; got warmup_epochs={warmup_epochs}, epochs={epochs}"
        )
    if total_steps is None:
        max_steps = round(epochs * steps_per_epoch)
        warmup = round(warmup_epochs * steps_per_epoch)
    else:
        max_steps = total_steps
        warmup = round(total_steps * warmup_epochs / epochs)
    if warmup_epochs > 0:
        warmup = max(warmup, 1)
    return min(warmup, max_steps - 1), max_steps
