"""Labels are checked against the classifier before anything compiles: each mismatch is one
line naming the dataset, the split and the numbers (exit status 2), and an unset
``model.num_classes`` comes from the dataset."""

from __future__ import annotations

import numpy as np
from train_helpers import CONFIGS, TINY, run

from jaxecg.data import DatasetWriter
from jaxecg.train.config import load_config


def _dataset(path, train_labels, val_labels, *, label_shape=()):
    """A tiny on-disk ECG dataset (records of 1000 samples) with the given labels."""
    writer = DatasetWriter(
        path,
        {"train": len(train_labels), "val": len(val_labels)},
        leads=12,
        length=1000,
        label_shape=label_shape,
    )
    ecg = np.zeros((12, 1000), np.float32)
    for split, labels in (("train", train_labels), ("val", val_labels)):
        for i, label in enumerate(labels):
            writer.append(split, f"{split}{i}", ecg, label)
    writer.finish({})
    return path


def _fails(tmp_path, capsys, data, *overrides) -> str:
    code = run("finetune_ecg", tmp_path / "run", f"data.source={data}", *overrides)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_fewer_classes_than_model_outputs(tmp_path, capsys) -> None:
    data = _dataset(tmp_path / "two", [0, 1] * 4, [0, 1])
    err = _fails(tmp_path, capsys, data, "model.num_classes=4")
    assert f"data.source='{data}', split 'train' uses classes 0..1 (2 classes)" in err
    assert "model.num_classes=4" in err


def test_label_out_of_range(tmp_path, capsys) -> None:
    data = _dataset(tmp_path / "range", [0, 1, 2, 3] * 2, [0, 5])
    err = _fails(tmp_path, capsys, data, "model.num_classes=4")
    assert "split 'val' has labels 0..5, out of range for model.num_classes=4" in err


def test_multi_label_targets_with_a_multi_class_loss(tmp_path, capsys) -> None:
    hot = np.eye(3, dtype=np.float32)
    data = _dataset(tmp_path / "hot", list(hot) * 2, list(hot), label_shape=(3,))
    err = _fails(tmp_path, capsys, data, "loss.task_type=multiclass")
    assert "split 'train' has multi-label targets (6, 3), but the loss is multi-class" in err


def test_multi_label_width_differs_from_the_model(tmp_path, capsys) -> None:
    hot = np.eye(3, dtype=np.float32)
    data = _dataset(tmp_path / "width", list(hot) * 2, list(hot), label_shape=(3,))
    err = _fails(tmp_path, capsys, data, "model.num_classes=5")
    assert "split 'train' has 3 classes per target, model.num_classes=5" in err


def test_empty_validation_split(tmp_path, capsys) -> None:
    data = _dataset(tmp_path / "empty", [0, 1, 2, 3] * 2, [])
    err = _fails(tmp_path, capsys, data)
    assert f"data.source='{data}', split 'val' is empty; fine-tuning needs it" in err


def test_unset_num_classes_comes_from_the_dataset(tmp_path) -> None:
    # The shipped fine-tuning configs leave model.num_classes unset (null).
    data = _dataset(tmp_path / "three", [0, 1, 2] * 2, [0, 1, 2])
    cfg = load_config(CONFIGS / "finetune_ecg.yaml", [*TINY["finetune_ecg"], f"data.source={data}"])
    assert cfg.model.num_classes == 3
    assert load_config(CONFIGS / "finetune_cmr.yaml", TINY["finetune_cmr"]).model.num_classes == 3
    explicit = load_config(CONFIGS / "finetune_ecg.yaml", ["model.num_classes=2"])
    assert explicit.model.num_classes == 2
