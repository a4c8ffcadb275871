"""CMR classification fine-tuning: ResNet encoder + linear or MLP head (docs/reference.md#heads).

torch-style Adam with L2 on every trainable parameter and a cosine (or
warmup-cosine) schedule in real steps. ``model.freeze_encoder`` keeps the
encoder out of the optimiser entirely (no update, no weight decay) — the model
already stops its gradient and runs its BatchNorms on running statistics.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxecg.config import Config
from jaxecg.data import cmr_train_view_batch
from jaxecg.errors import ConfigError
from jaxecg.models import CMRClassifier, CMRClassifierConfig, cmr_classifier_loss
from jaxecg.scoring import classification_metrics
from jaxecg.train.config import ExperimentConfig
from jaxecg.train.optim import adam_l2, freeze
from jaxecg.train.tasks.base import Batch, PyTree, Task, TaskSpec
from jaxecg.train.tasks.common import (
    CMRDataConfig,
    TransferReport,
    checked_classifier_datasets,
    cmr_datasets,
    mean_of,
    merge_pretrained,
    model_input_like,
)
from jaxecg.weights import read_weights

# Where each kind of pretrained source keeps the ResNet encoder's variables; a CMR
# classifier's run continues as the whole model (head included).
_ENCODER_PATH = {"cmr_encoder": (), "simclr": ("encoder_imaging",)}
_KINDS = (*_ENCODER_PATH, "cmr_classifier")


@dataclasses.dataclass(frozen=True)
class CMRLossConfig(Config):
    """Nothing beyond the model's ``class_weights``; kept for a uniform config layout."""


class CMRFinetuneTask(Task):
    """Cross-entropy on one (p = 0.95) augmented view; metrics AUROC/F1/accuracy."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.model_cfg: CMRClassifierConfig = self.model_config()
        self.model = CMRClassifier(self.model_cfg)

    def datasets(self):
        num_classes = self.model_cfg.num_classes
        return checked_classifier_datasets(
            self.cfg.data,
            cmr_datasets(self.cfg.data, num_classes=num_classes),
            num_classes=num_classes,
            multilabel=False,
        )

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, PyTree]:
        variables = self.model.init(rng, model_input_like(self.cfg.data, batch), train=False)
        return {"params": variables["params"], "batch_stats": variables["batch_stats"]}

    def optimizer(self, params: PyTree, *, steps_per_epoch: int, total_steps: int | None):
        schedule, total = self.main_schedule(steps_per_epoch, total_steps)
        tx = adam_l2(schedule, self.cfg.optim)
        if self.model_cfg.freeze_encoder:
            tx = freeze(tx, params, lambda names: names[0] == "encoder")
        return tx, schedule, total

    def _logits(self, params, batch_stats, images, train: bool):
        variables = {"params": params, "batch_stats": batch_stats}
        if not train:
            return self.model.apply(variables, images, train=False), batch_stats
        logits, updates = self.model.apply(variables, images, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]

    def loss(self, params, batch_stats, batch, rng):
        images = cmr_train_view_batch(
            rng, batch["image"].astype(self.model_cfg.dtype), self.cfg.data.augment, True
        )
        logits, batch_stats = self._logits(params, batch_stats, images, train=True)
        loss = cmr_classifier_loss(self.model_cfg, logits.astype(jnp.float32), batch["label"])
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch["label"])
        return loss, (batch_stats, {"loss": loss, "accuracy": accuracy})

    def eval_outputs(self, params, batch_stats, batch, rng):
        images = cmr_train_view_batch(
            rng, batch["image"].astype(self.model_cfg.dtype), self.cfg.data.augment, False
        )
        logits, _ = self._logits(params, batch_stats, images, train=False)
        logits = logits.astype(jnp.float32)
        loss = cmr_classifier_loss(self.model_cfg, logits, batch["label"])
        return {"loss": loss[None], "logits": logits, "label": batch["label"]}

    def summarize(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return {
            **mean_of(outputs, "loss"),
            **classification_metrics(outputs["logits"], outputs["label"], multilabel=False),
        }

    def load_pretrained(self, variables, source):
        loaded = read_weights(source, kind="cmr_encoder", config=self.model_cfg.encoder)
        if loaded.kind not in _KINDS:
            raise ConfigError(
                f"pretrained_weights {source!r} holds {loaded.kind!r}; expected one of {list(_KINDS)}"
            )
        merged, report = {}, TransferReport()
        for collection in ("params", "batch_stats"):
            tree = loaded.variables[collection]
            if loaded.kind != "cmr_classifier":
                for key in _ENCODER_PATH[loaded.kind]:
                    tree = tree[key]
                tree = {"encoder": tree}
            merged[collection], part = merge_pretrained(variables[collection], tree, source=source)
            report = report + part
        print(report.summary(loaded.origin), flush=True)
        return merged


SPEC = TaskSpec(
    name="cmr_finetune",
    model_config=CMRClassifierConfig,
    loss_config=CMRLossConfig,
    data_config=CMRDataConfig,
    build=CMRFinetuneTask,
    classes_from="cmr",
)
