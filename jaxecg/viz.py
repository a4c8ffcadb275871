"""Look inside the ECG models: attention maps over leads × time and MAE reconstructions.

Computing (pure JAX, batched):

- :func:`attention_maps` — the last block's attention of an ECG classifier (its sown
  ``"attn_map"``) or encoder, averaged over heads, read from the cls-token row (or the
  mean over all query rows), and put back on the ``(lead rows, time patches)`` token
  grid. Token order is the grid's row-major order unless masking ``noise`` is given;
  then the kept tokens come in shuffled order and :func:`token_positions` maps them
  back (dropped positions are NaN).
- :func:`reconstructions` — an MAE's prediction, with its mask, for given noise.

Rendering (matplotlib, Agg, PNG): :func:`plot_ecg_reconstruction` (12 leads, masked
patches shaded, reconstruction overlaid) and :func:`plot_attention` (heat map over
leads × time, optionally with the traces on top). :func:`export_attention` and
:func:`export_reconstruction` write one ``.npz`` + ``.png`` per chosen record.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxecg.data.synthetic import LEAD_NAMES
from jaxecg.encoders import Encoder, LoadedModel
from jaxecg.models.ecg_classifier import ECGClassifier, ECGClassifierConfig
from jaxecg.models.mae import MAE, MAEOutput
from jaxecg.models.masking import blockwise_masking, masking_noise, random_masking
from jaxecg.models.vit import ECGEncoder, ViTBackboneConfig

Query = Literal["cls", "mean"]
Noise = jax.Array | tuple[jax.Array, jax.Array]
FS = 500  # the reference's sampling rate: x axes in seconds
DPI = 100


# ---------------------------------------------------------------------------- attention


def token_positions(noise: Noise, config: ECGClassifierConfig) -> jax.Array:
    """Grid positions ``(B, N')`` (row-major ``row * gw + col``) of the tokens the
    classifier keeps, in its order, under masking ``noise`` (see ``ECGClassifier``).

    Computed by masking a "token" that carries its own position, exactly as the model
    masks its patch tokens.
    """
    noise_batch = (noise[0] if config.masking_blockwise else noise).shape[0]
    positions = jnp.broadcast_to(
        jnp.arange(config.num_patches, dtype=jnp.float32)[None, :, None],
        (noise_batch, config.num_patches, 1),
    )
    if config.masking_blockwise:
        kept = blockwise_masking(
            positions,
            config.grid_size,
            noise[0],
            noise[1],
            config.mask_c_ratio,
            config.mask_t_ratio,
        ).x_masked
    else:
        kept = random_masking(positions, noise, config.mask_ratio).x_masked
    return kept[..., 0].astype(jnp.int32)


def attention_grid(
    attn_map: jax.Array,
    grid_size: tuple[int, int],
    *,
    positions: jax.Array | None = None,
    query: Query = "cls",
) -> jax.Array:
    """``(B, heads, 1 + N', 1 + N')`` attention → ``(B, gh, gw)`` on the token grid.

    Heads are averaged; ``query="cls"`` takes the cls token's row, ``"mean"`` the mean
    over every query row. The cls key is dropped. ``positions (B, N')`` are the grid
    positions of the tokens (default: all ``gh * gw`` in grid order); positions no token
    holds are NaN.
    """
    probs = jnp.mean(attn_map, axis=1)
    weights = probs[:, 0] if query == "cls" else jnp.mean(probs, axis=1)
    weights = weights[:, 1:]
    batch, tokens = weights.shape
    grid_h, grid_w = grid_size
    if positions is None:
        if tokens != grid_h * grid_w:
            raise ValueError(
                f"{tokens} tokens do not fill the {grid_size} grid; pass their positions"
            )
        return weights.reshape(batch, grid_h, grid_w)
    grid = jnp.full((batch, grid_h * grid_w), jnp.nan, weights.dtype)
    grid = grid.at[jnp.arange(batch)[:, None], positions].set(weights)
    return grid.reshape(batch, grid_h, grid_w)


def attention_maps(
    model: LoadedModel | Encoder, x: Any, *, noise: Noise | None = None, query: Query = "cls"
) -> jax.Array:
    """Last-block attention of ``model`` on ECGs ``x (B, 12, T)`` as ``(B, gh, gw)`` grids.

    ``model``: an ``ecg_classifier`` :class:`LoadedModel` (its sown ``"attn_map"``;
    ``noise`` masks tokens as in training, dropped positions NaN) or an ECG
    :class:`Encoder` (no masking).
    """
    if isinstance(model, Encoder):
        if model.kind != "ecg" or noise is not None:
            raise ValueError("attention of an Encoder needs an ECG encoder and no noise")
        config = model.config

        def last_block(module: ECGEncoder, x: jax.Array) -> jax.Array:
            return module.encode_tokens(module.embed_patches(x), train=False, return_attn=True)[1]

        attn = ECGEncoder(config).apply(model.params, x, method=last_block)
        return attention_grid(attn, config.grid_size, query=query)
    if model.kind != "ecg_classifier":
        raise ValueError(
            f"attention maps need an ecg_classifier model or an Encoder, got {model.kind!r}"
        )
    config = model.config
    _, state = ECGClassifier(config).apply(
        model.variables, x, noise=noise, mutable=["intermediates"]
    )
    (attn,) = state["intermediates"]["attn_map"]
    positions = None if noise is None else token_positions(noise, config)
    return attention_grid(attn, config.grid_size, positions=positions, query=query)


# ---------------------------------------------------------------------------- reconstruction


def reconstructions(
    model: LoadedModel,
    x: Any,
    *,
    noise: jax.Array | None = None,
    seed: int = 0,
    mask_ratio: float | None = None,
) -> MAEOutput:
    """The MAE's output for ECGs ``x (B, 12, T)``; ``noise (B, N)`` (default: drawn from ``seed``)."""
    if model.kind != "mae":
        raise ValueError(f"reconstructions need an mae model, got {model.kind!r}")
    config = model.config
    if noise is None:
        noise = masking_noise(jax.random.key(seed), (np.shape(x)[0], config.num_patches))
    return MAE(config).apply(model.variables, x, noise=noise, mask_ratio=mask_ratio)


# ---------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    """A pyplot-free figure (no global state); PNGs render through Agg."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _lead_names(count: int) -> list[str]:
    return list(LEAD_NAMES) if count == len(LEAD_NAMES) else [f"lead {i}" for i in range(count)]


def plot_ecg_reconstruction(
    ecg: Any,
    path: str | Path,
    *,
    reconstruction: Any | None = None,
    mask: Any | None = None,
    config: ViTBackboneConfig | None = None,
    title: str | None = None,
) -> Path:
    """A 12-lead ECG ``(leads, T)`` as a PNG; patches with ``mask == 1`` (``(N,)``, grid
    order, needs ``config`` for the patch grid) shaded, ``reconstruction (leads, T)``
    overlaid in red."""
    ecg = np.asarray(ecg)
    leads, length = ecg.shape
    seconds = np.arange(length) / FS
    fig = _figure(12, 1.0 * leads)
    axes = fig.subplots(leads, 1, sharex=True, squeeze=False)[:, 0]
    for lead, (ax, name) in enumerate(zip(axes, _lead_names(leads))):
        if mask is not None:
            grid_h, grid_w = config.grid_size
            patch_h, patch_w = config.patch_size
            row = np.asarray(mask).reshape(grid_h, grid_w)[lead // patch_h]
            for col in np.flatnonzero(row > 0.5):
                ax.axvspan(
                    col * patch_w / FS,
                    (col + 1) * patch_w / FS,
                    color="tab:orange",
                    alpha=0.25,
                    lw=0,
                )
        ax.plot(seconds, ecg[lead], color="black", lw=0.7)
        if reconstruction is not None:
            ax.plot(seconds, np.asarray(reconstruction)[lead], color="tab:red", lw=0.7)
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.set_yticks([])
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, length / FS)
    if title:
        axes[0].set_title(title)
    return _save(fig, path)


def plot_attention(
    attention: Any,
    path: str | Path,
    *,
    ecg: Any | None = None,
    title: str | None = None,
) -> Path:
    """Heat map of a ``(gh, gw)`` attention grid over leads × time as a PNG (NaN =
    masked, left blank); with ``ecg (leads, T)`` each lead's trace is drawn in its row
    (needs one grid row per lead)."""
    attention = np.asarray(attention)
    grid_h, grid_w = attention.shape
    fig = _figure(12, 0.45 * grid_h + 1.2)
    ax = fig.add_subplot()
    length = grid_w if ecg is None else np.shape(ecg)[1]
    duration = length / FS if ecg is not None else grid_w
    image = ax.imshow(
        np.ma.masked_invalid(attention),
        aspect="auto",
        cmap="magma",
        interpolation="nearest",
        extent=(0, duration, grid_h - 0.5, -0.5),
    )
    fig.colorbar(image, ax=ax, label="attention")
    if ecg is not None:
        ecg = np.asarray(ecg)
        if ecg.shape[0] != grid_h:
            raise ValueError(f"{ecg.shape[0]} leads do not match {grid_h} grid rows")
        seconds = np.arange(ecg.shape[1]) / FS
        scale = 0.4 / max(float(np.max(np.abs(ecg))), 1e-12)  # each trace stays within its row
        for lead in range(grid_h):
            ax.plot(seconds, lead - scale * ecg[lead], color="white", lw=0.5)
    ax.set_yticks(range(grid_h), _lead_names(grid_h))
    ax.set_xlabel("time (s)" if ecg is not None else "time patch")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_roc_curves(
    truth: Any,
    probs: Any,
    classes: list[str],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """One ROC curve per class (``truth`` ``(N, C)`` 0/1, ``probs`` ``(N, C)``) as a PNG;
    classes without both positives and negatives in ``truth`` are left out (no curve)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    truth, probs = np.asarray(truth), np.asarray(probs)
    fig = _figure(6, 6)
    ax = fig.add_subplot()
    for c, name in enumerate(classes):
        if 0 < truth[:, c].sum() < len(truth):
            fpr, tpr, _ = roc_curve(truth[:, c], probs[:, c])
            auroc = roc_auc_score(truth[:, c], probs[:, c])
            ax.plot(fpr, tpr, lw=1.2, label=f"{name} (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_aspect("equal")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_training_curves(records: list[dict[str, float]], path: str | Path) -> Path:
    """A run's ``metrics.jsonl`` records as a PNG: training/validation loss, learning rate
    and the other validation metrics, each over steps."""
    fig = _figure(12, 3.5)
    loss_ax, lr_ax, val_ax = fig.subplots(1, 3)

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        return [p[0] for p in points], [p[1] for p in points]

    loss_ax.plot(*series("loss"), lw=0.8, label="train")
    loss_ax.plot(*series("val/loss"), marker="o", ms=3, label="validation")
    loss_ax.set_title("loss")
    loss_ax.legend(fontsize="small")
    lr_ax.plot(*series("lr"), lw=0.8)
    lr_ax.set_title("learning rate")
    keys = sorted({k for r in records for k in r if k.startswith("val/") and k != "val/loss"})
    for key in keys:
        val_ax.plot(*series(key), marker="o", ms=3, label=key[len("val/") :])
    val_ax.set_title("validation metrics")
    if keys:
        val_ax.legend(fontsize="small")
    for ax in (loss_ax, lr_ax, val_ax):
        ax.set_xlabel("step")
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


# ---------------------------------------------------------------------------- export


def _stem(record_id: str) -> str:
    """A record id as a file-name stem (path separators and odd characters → ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", record_id).strip("._") or "record"


def export_attention(
    model: LoadedModel | Encoder,
    ecgs: Any,
    record_ids: list[str],
    out_dir: str | Path,
    *,
    noise: Noise | None = None,
    query: Query = "cls",
) -> list[Path]:
    """Per record: ``<id>_attention.npz`` (``ecg``, ``attention (gh, gw)``) and ``.png``."""
    ecgs = np.asarray(ecgs)
    maps = np.asarray(attention_maps(model, ecgs, noise=noise, query=query))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for record_id, ecg, grid in zip(record_ids, ecgs, maps, strict=True):
        stem = out_dir / f"{_stem(record_id)}_attention"
        np.savez(stem.with_suffix(".npz"), ecg=ecg, attention=grid)
        written.append(
            plot_attention(
                grid,
                stem.with_suffix(".png"),
                ecg=ecg,
                title=f"{record_id}: last-block attention ({query})",
            )
        )
    return written


def export_reconstruction(
    model: LoadedModel,
    ecgs: Any,
    record_ids: list[str],
    out_dir: str | Path,
    *,
    seed: int = 0,
    mask_ratio: float | None = None,
) -> list[Path]:
    """Per record: ``<id>_reconstruction.npz`` (``ecg``, ``reconstruction``, ``mask (N,)``)
    and ``.png`` (masked patches shaded, reconstruction overlaid)."""
    ecgs = np.asarray(ecgs)
    out = reconstructions(model, ecgs, seed=seed, mask_ratio=mask_ratio)
    recon, mask = np.asarray(out.reconstruction), np.asarray(out.mask)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for record_id, ecg, rec, msk in zip(record_ids, ecgs, recon, mask, strict=True):
        stem = out_dir / f"{_stem(record_id)}_reconstruction"
        np.savez(stem.with_suffix(".npz"), ecg=ecg, reconstruction=rec, mask=msk)
        written.append(
            plot_ecg_reconstruction(
                ecg,
                stem.with_suffix(".png"),
                reconstruction=rec,
                mask=msk,
                config=model.config,
                title=f"{record_id}: MAE reconstruction (shaded: masked patches)",
            )
        )
    return written
