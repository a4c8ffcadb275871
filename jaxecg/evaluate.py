"""``jaxecg evaluate RUN [--split test|val] [--checkpoint best|latest|STEP] [--out FILE]``.

Scores a fine-tuned classifier run (ECG or CMR) on a split of the dataset it was trained
on, with every record counted: batches are padded to one shape and the padding masked
out (:mod:`jaxecg.data.batches`). The inputs are the training run's evaluation view
(the ECG crop at 0, the CMR resize), the model runs in inference mode, and the scores
come from :func:`jaxecg.scoring.classification_report` (scikit-learn). Writes::

    FILE            {"run", "split", "num_records", "checkpoint_step", "checkpoint",
                     "classes", "metrics": {"auroc_macro", "auprc_macro", "f1_macro",
                     "accuracy", "auroc_macro_ci95", "per_class": {...}}}
    FILE stem + _roc.png   one ROC curve per class

(default ``RUN/evaluate_<split>.json``). Scores that a split cannot define (a class
without positives or negatives) are ``null``. Nothing here imports the training stack.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxecg.errors import UsageError, run_command

EVALUATED_KINDS = {"ecg_classifier": "ecg", "cmr_classifier": "cmr"}


def _checkpoint_choice(text: str) -> str | int:
    if text in ("best", "latest"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected best, latest or a step number, got {text!r}")


def predict(
    model: Any, records: Any, data: dict[str, Any], *, batch_size: int, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits (N, C), labels)`` of every record, batches sharded over all devices."""
    import jax
    import tqdm

    from jaxecg.compile_options import compiler_options
    from jaxecg.data import CMRAugmentConfig, ECGAugmentConfig
    from jaxecg.data.augment_cmr import cmr_train_view_batch
    from jaxecg.data.augment_ecg import ecg_augment_batch
    from jaxecg.data.batches import padded_batches, valid_rows
    from jaxecg.devices import batch_sharding, make_mesh, replicated, to_host
    from jaxecg.models import CMRClassifier, ECGClassifier

    mesh = make_mesh()
    if batch_size <= 0 or batch_size % mesh.devices.size:
        raise UsageError(
            f"--batch-size {batch_size} must be a positive multiple of the "
            f"{mesh.devices.size} devices"
        )
    augment = data.get("augment", {})
    if model.kind == "ecg_classifier":
        module, key = ECGClassifier(model.config), "ecg"
        view_cfg = ECGAugmentConfig.from_dict(augment)

        def view(rng, x):
            return ecg_augment_batch(rng, x, view_cfg, False)
    else:
        module, key = CMRClassifier(model.config), "image"
        view_cfg = CMRAugmentConfig.from_dict(augment)

        def view(rng, x):
            return cmr_train_view_batch(rng, x, view_cfg, False)

    def logits_of(variables: Any, inputs: jax.Array) -> jax.Array:
        # The evaluation views are deterministic; the key is only their signature's.
        return module.apply(variables, view(jax.random.key(0), inputs), train=False)

    options = compiler_options(resnet=model.kind == "cmr_classifier")
    compiled = jax.jit(logits_of, compiler_options=options)
    variables = jax.device_put(model.variables, replicated(mesh))
    logits, labels = [], []
    bar = tqdm.tqdm(
        total=len(records), unit="record", desc="evaluate", disable=not progress, file=sys.stderr
    )
    with bar:
        for batch, valid in padded_batches(records, batch_size, sharding=batch_sharding(mesh)):
            logits.append(valid_rows(to_host(compiled(variables, batch[key])), valid))
            labels.append(valid_rows(to_host(batch["label"]), valid))
            bar.update(int(valid.sum()))
    return np.concatenate(logits).astype(np.float64), np.concatenate(labels)


def evaluate_run(
    run: str | Path,
    *,
    split: str = "test",
    checkpoint: str | int = "best",
    batch_size: int | None = None,
    bootstrap_samples: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """``(result JSON dict, truth (N, C) 0/1, probabilities (N, C))`` of ``run`` on ``split``.

    ``batch_size``: global batch (default: the run's evaluation batch).
    ``bootstrap_samples``: resamples behind ``auroc_macro_ci95`` (default 1000).
    """
    from jaxecg.data.splits import check_labels, class_names, open_split
    from jaxecg.scoring import (
        BOOTSTRAP_SAMPLES,
        classification_report,
        one_hot_truth,
        probabilities,
    )
    from jaxecg.weights import is_training_run, read_run_checkpoint, run_checkpoint

    if not is_training_run(run):
        raise UsageError(f"RUN {str(run)!r} is not a 'jaxecg train' run (no checkpoints/<step>)")
    found = run_checkpoint(run, checkpoint)
    task = found.experiment.get("task")
    model = read_run_checkpoint(found)
    if model.kind not in EVALUATED_KINDS:
        raise UsageError(
            f"RUN {str(run)!r} is a {task} run; evaluate scores a fine-tuned classifier "
            "(ecg_finetune or cmr_finetune run)"
        )
    modality = EVALUATED_KINDS[model.kind]
    experiment = found.experiment
    data, train = experiment.get("data", {}), experiment.get("train", {})
    multilabel = experiment.get("loss", {}).get("task_type") == "multilabel"
    num_classes = model.config.num_classes
    source = data.get("source", "synthetic")
    records = open_split(
        modality,
        split,
        source=source,
        num_records=data.get("num_eval", 0),
        seed=data.get("seed", 0),
        size=data["record_length"] if modality == "ecg" else data["image_size"],
        num_classes=num_classes,
    )
    check_labels(
        records,
        split=split,
        source=source,
        num_classes=num_classes,
        multilabel=multilabel,
        what="evaluate",
    )
    batch_size = batch_size or train.get("eval_batch_size") or train.get("batch_size")
    logits, labels = predict(model, records, data, batch_size=batch_size, progress=progress)
    if multilabel and labels.ndim == 1:
        labels = np.eye(num_classes, dtype=np.int64)[labels]
    classes = class_names(modality, source, num_classes)
    metrics = classification_report(
        logits,
        labels,
        classes,
        multilabel=multilabel,
        bootstrap_samples=bootstrap_samples or BOOTSTRAP_SAMPLES,
    )
    result = {
        "run": str(found.workdir),
        "split": split,
        "num_records": len(records),
        "checkpoint_step": found.step,
        "checkpoint": found.chosen,
        "classes": classes,
        "metrics": metrics,
    }
    truth = one_hot_truth(labels, num_classes, multilabel=multilabel)
    return result, truth, probabilities(logits, multilabel=multilabel)


def table(result: dict[str, Any]) -> str:
    """The metrics as a fixed-width text table (per class, then macro)."""
    metrics = result["metrics"]
    width = max(len("macro"), *(len(name) for name in result["classes"]))
    heading = (
        f"{result['run']}: {result['split']} split, {result['num_records']} records, "
        f"checkpoint step {result['checkpoint_step']} ({result['checkpoint']})"
    )
    lines = [
        heading,
        f"{'class':<{width}}  {'AUROC':>6}  {'AUPRC':>6}  {'F1':>6}  {'support':>7}",
    ]
    for name, scores in metrics["per_class"].items():
        lines.append(
            f"{name:<{width}}  {scores['auroc']:6.3f}  {scores['auprc']:6.3f}  "
            f"{scores['f1']:6.3f}  {scores['support']:7d}"
        )
    lo, hi = metrics["auroc_macro_ci95"]
    lines.append(
        f"{'macro':<{width}}  {metrics['auroc_macro']:6.3f}  {metrics['auprc_macro']:6.3f}  "
        f"{metrics['f1_macro']:6.3f}  {'':>7}"
    )
    lines.append(f"accuracy {metrics['accuracy']:.3f}; macro AUROC 95% CI [{lo:.3f}, {hi:.3f}]")
    return "\n".join(lines)


def write_result(
    result: dict[str, Any], truth: np.ndarray, probs: np.ndarray, out: Path
) -> tuple[Path, Path]:
    """``out`` (JSON) and the ROC curves PNG beside it; returns both paths."""
    from jaxecg.scoring import json_safe
    from jaxecg.viz import plot_roc_curves

    out.parent.mkdir(parents=True, exist_ok=True)
    png = plot_roc_curves(
        truth,
        probs,
        result["classes"],
        out.with_name(f"{out.stem}_roc.png"),
        title=f"{result['split']} split, step {result['checkpoint_step']}",
    )
    out.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")
    return out, png


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxecg evaluate",
        description="Score a fine-tuned classifier run on a split of its dataset.",
    )
    parser.add_argument("run", metavar="RUN", type=Path, help="a 'jaxecg train' run directory")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument(
        "--checkpoint",
        type=_checkpoint_choice,
        default="best",
        metavar="best|latest|STEP",
        help="which checkpoint (default: the run's best, else its newest)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="JSON to write (default RUN/evaluate_SPLIT.json)"
    )
    parser.add_argument("--batch-size", type=int, help="global batch (default: the run's)")
    parser.add_argument(
        "--bootstrap-samples", type=int, help="resamples of the AUROC interval (default 1000)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``jaxecg evaluate``; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> None:
        result, truth, probs = evaluate_run(
            args.run,
            split=args.split,
            checkpoint=args.checkpoint,
            batch_size=args.batch_size,
            bootstrap_samples=args.bootstrap_samples,
            progress=not args.no_progress,
        )
        print(table(result))
        out = args.out or args.run / f"evaluate_{args.split}.json"
        written = write_result(result, truth, probs, out)
        print(f"wrote {written[0]} and {written[1]}")

    return run_command("evaluate", body)
