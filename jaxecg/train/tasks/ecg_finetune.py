"""ECG classification fine-tuning of the ViT (docs/reference.md#ecg-classifier).

AdamW over oetu/mae ``param_groups_lrd`` groups: no decay for 1-D tensors,
``pos_embed`` and ``cls_token``; per-layer lr scale ``layer_decay ** (L - id)``
which, unlike the reference (it stores but never applies it), is applied —
``optim.layer_decay: 1.0`` switches it off. Multilabel targets train with BCE
(optional ``pos_weight``), multiclass with label-smoothed cross-entropy.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxecg.config import Config, ConfigError
from jaxecg.data import ecg_augment_batch
from jaxecg.losses.classification import binary_cross_entropy_with_logits, cross_entropy
from jaxecg.models.ecg_classifier import ECGClassifier, ECGClassifierConfig
from jaxecg.models.pos_embed import sincos_pos_embed_f32
from jaxecg.scoring import classification_metrics
from jaxecg.train.config import ExperimentConfig
from jaxecg.train.optim import adamw, vit_decay_mask, vit_layer_scales
from jaxecg.train.tasks.base import Batch, PyTree, Task, TaskSpec
from jaxecg.train.tasks.common import (
    ECGDataConfig,
    check_time_steps,
    checked_classifier_datasets,
    ecg_datasets,
    mean_of,
    merge_pretrained,
)
from jaxecg.weights import read_weights


@dataclasses.dataclass(frozen=True)
class ECGLossConfig(Config):
    """``multilabel``: BCE with ``pos_weight`` (C,); ``multiclass``: CE with ``label_smoothing``."""

    task_type: Literal["multilabel", "multiclass"] = "multilabel"
    label_smoothing: float = 0.1
    pos_weight: tuple[float, ...] | None = None


def _with_pos_embed(params: PyTree, kind: str, model_cfg: ECGClassifierConfig) -> PyTree:
    """An MAE's fixed sin-cos table becomes the classifier's (learned) ``pos_embed``, as the
    reference's loading does; its decoder and mask token are reported as ignored."""
    if kind != "mae":
        return params
    return {**params, "pos_embed": sincos_pos_embed_f32(model_cfg.embed_dim, model_cfg.grid_size)}


class ECGFinetuneTask(Task):
    """Classification of augmented ECG crops; metrics AUROC (macro), F1, accuracy."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.model_cfg: ECGClassifierConfig = self.model_config()
        self.loss_cfg: ECGLossConfig = cfg.loss
        check_time_steps(cfg.data.augment.time_steps, self.model_cfg.img_size)
        pos_weight = self.loss_cfg.pos_weight
        if pos_weight is not None and len(pos_weight) != self.model_cfg.num_classes:
            raise ConfigError(
                f"loss.pos_weight has {len(pos_weight)} entries; expected "
                f"model.num_classes={self.model_cfg.num_classes}"
            )
        self.model = ECGClassifier(self.model_cfg)
        self.multilabel = self.loss_cfg.task_type == "multilabel"

    def datasets(self):
        num_classes = self.model_cfg.num_classes
        return checked_classifier_datasets(
            self.cfg.data,
            ecg_datasets(self.cfg.data, num_classes=num_classes),
            num_classes=num_classes,
            multilabel=self.multilabel,
        )

    def _targets(self, labels: jax.Array) -> jax.Array:
        """Class ids become one-hot rows for BCE; (B, C) targets pass through."""
        if self.multilabel and labels.ndim == 1:
            return jax.nn.one_hot(labels, self.model_cfg.num_classes)
        return labels

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, PyTree]:
        x = ecg_augment_batch(rng, batch["ecg"], self.cfg.data.augment, False)
        params = self.model.init(rng, x)["params"]
        return {"params": params, "batch_stats": {}}

    def optimizer(self, params: PyTree, *, steps_per_epoch: int, total_steps: int | None):
        optim = self.cfg.optim
        schedule, total = self.main_schedule(steps_per_epoch, total_steps)
        scales = None
        if optim.layer_decay != 1.0:
            scales = vit_layer_scales(
                params, depth=self.model_cfg.depth, layer_decay=optim.layer_decay
            )
        tx = adamw(schedule, optim, decay_mask=vit_decay_mask(params), lr_scales=scales)
        return tx, schedule, total

    def _loss_of(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        logits = logits.astype(jnp.float32)
        if self.multilabel:
            return binary_cross_entropy_with_logits(
                logits, self._targets(labels), pos_weight=self.loss_cfg.pos_weight
            )
        return cross_entropy(logits, labels, label_smoothing=self.loss_cfg.label_smoothing)

    def loss(self, params, batch_stats, batch, rng):
        k_aug, k_drop, k_mask = jax.random.split(rng, 3)
        x = ecg_augment_batch(k_aug, batch["ecg"], self.cfg.data.augment, True)
        logits = self.model.apply(
            {"params": params},
            x,
            train=True,
            rngs={"dropout": k_drop, "masking": k_mask},
        )
        loss = self._loss_of(logits, batch["label"])
        return loss, (batch_stats, {"loss": loss})

    def eval_outputs(self, params, batch_stats, batch, rng):
        x = ecg_augment_batch(rng, batch["ecg"], self.cfg.data.augment, False)
        logits = self.model.apply({"params": params}, x, train=False)
        loss = self._loss_of(logits, batch["label"])
        return {"loss": loss[None], "logits": logits.astype(jnp.float32), "label": batch["label"]}

    def summarize(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        labels = outputs["label"]
        if self.multilabel and labels.ndim == 1:
            labels = np.eye(self.model_cfg.num_classes)[labels]
        return {
            **mean_of(outputs, "loss"),
            **classification_metrics(outputs["logits"], labels, multilabel=self.multilabel),
        }

    def load_pretrained(self, variables, source):
        loaded = read_weights(source, kind="ecg_classifier", config=self.model_cfg)
        if loaded.kind not in ("ecg_classifier", "ecg_encoder", "mae"):
            raise ConfigError(
                f"pretrained_weights {source!r} holds {loaded.kind!r}, not ViT weights"
            )
        params, report = merge_pretrained(
            variables["params"],
            _with_pos_embed(loaded.variables["params"], loaded.kind, self.model_cfg),
            source=source,
            drop_unknown=True,
        )
        print(report.summary(loaded.origin), flush=True)
        return {"params": params, "batch_stats": {}}


SPEC = TaskSpec(
    name="ecg_finetune",
    model_config=ECGClassifierConfig,
    loss_config=ECGLossConfig,
    data_config=ECGDataConfig,
    build=ECGFinetuneTask,
    classes_from="ecg",
)
