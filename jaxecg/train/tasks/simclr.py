"""SimCLR pretraining of the CMR ResNet, online classifier (docs/reference.md#simclr-training).

Params are ``{"model": SimCLR tree, "classifier": LinearClassifier tree}``; one
``multi_transform`` gives each part its own optimiser, as the reference's two
optimisers: the model trains with torch-style Adam + L2 on NT-Xent, the
classifier with its own Adam on the cross-entropy of
``stop_gradient(encoder features of view 0)``. The schedule is stepped
(the reference never steps it, a bug not copied).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxecg.config import Config
from jaxecg.data import cmr_contrastive_views_batch
from jaxecg.errors import ConfigError
from jaxecg.losses import nt_xent
from jaxecg.losses.classification import cross_entropy
from jaxecg.metrics import top_k_accuracy
from jaxecg.models import LinearClassifier, SimCLR, SimCLRConfig
from jaxecg.scoring import classification_metrics
from jaxecg.train.config import ExperimentConfig, OptimConfig
from jaxecg.train.optim import adam_l2
from jaxecg.train.tasks.base import Batch, PyTree, Task, TaskSpec
from jaxecg.train.tasks.common import (
    CMRDataConfig,
    cmr_datasets,
    mean_of,
    merge_pretrained,
    model_input_like,
)
from jaxecg.weights import read_weights


@dataclasses.dataclass(frozen=True)
class SimCLRLossConfig(Config):
    """The online classifier's optimiser (Adam, constant lr) and class weights."""

    classifier_lr: float = 3e-4
    classifier_weight_decay: float = 1e-4
    class_weights: tuple[float, ...] | None = None


def _top_k(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    # k is capped at the number of candidates so tiny batches/class counts stay defined.
    return top_k_accuracy(logits, labels, min(k, logits.shape[1]))


class SimCLRTask(Task):
    """NT-Xent on two augmented views of each image; online classifier on view-0 features."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.model_cfg: SimCLRConfig = self.model_config()
        self.model = SimCLR(self.model_cfg)
        self.classifier = LinearClassifier(
            self.model_cfg.num_classes, self.model_cfg.init_strat, **self.model_cfg.dtypes
        )

    def datasets(self):
        return cmr_datasets(self.cfg.data, num_classes=self.model_cfg.num_classes)

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, PyTree]:
        images = model_input_like(self.cfg.data, batch)
        k_model, k_cls = jax.random.split(rng)
        variables = self.model.init(k_model, images, train=False)
        features = self.model.apply(variables, images, method=SimCLR.encode)
        classifier = self.classifier.init(k_cls, features)
        return {
            "params": {"model": variables["params"], "classifier": classifier["params"]},
            "batch_stats": variables["batch_stats"],
        }

    def optimizer(self, params: PyTree, *, steps_per_epoch: int, total_steps: int | None):
        schedule, total = self.main_schedule(steps_per_epoch, total_steps)
        loss_cfg: SimCLRLossConfig = self.cfg.loss
        tx = optax.multi_transform(
            {
                "model": adam_l2(schedule, self.cfg.optim),
                # The reference's plateau scheduler never fires within a run: a constant lr,
                # and torch's default Adam betas/eps.
                "classifier": adam_l2(
                    optax.constant_schedule(loss_cfg.classifier_lr),
                    OptimConfig(weight_decay=loss_cfg.classifier_weight_decay),
                ),
            },
            {"model": "model", "classifier": "classifier"},
        )
        return tx, schedule, total

    def _embed(self, params: PyTree, batch_stats: PyTree, x: jax.Array, train: bool):
        """``((projections, features), new batch_stats)`` of one view."""

        def forward(module: SimCLR, images: jax.Array):
            features = module.encode(images, train=train)
            return module.projection_head(features, train=train), features

        variables = {"params": params, "batch_stats": batch_stats}
        if not train:
            return self.model.apply(variables, x, method=forward), batch_stats
        out, updates = self.model.apply(variables, x, method=forward, mutable=["batch_stats"])
        return out, updates["batch_stats"]

    def _objectives(self, params, batch_stats, batch, rng, train: bool):
        view0, view1 = cmr_contrastive_views_batch(
            rng, batch["image"].astype(self.model_cfg.dtype), self.cfg.data.augment
        )
        # Each view is its own forward pass, so BatchNorm sees per-view batches as in the reference.
        (z0, h0), batch_stats = self._embed(params["model"], batch_stats, view0, train)
        (z1, _), batch_stats = self._embed(params["model"], batch_stats, view1, train)
        loss, logits, labels = nt_xent(
            z0.astype(jnp.float32), z1.astype(jnp.float32), self.model_cfg.temperature
        )
        class_logits = self.classifier.apply(
            {"params": params["classifier"]}, jax.lax.stop_gradient(h0)
        ).astype(jnp.float32)
        class_loss = cross_entropy(
            class_logits, batch["label"], class_weight=self.cfg.loss.class_weights
        )
        return loss, class_loss, logits, labels, class_logits, batch_stats

    def loss(self, params, batch_stats, batch, rng):
        loss, class_loss, logits, labels, class_logits, batch_stats = self._objectives(
            params, batch_stats, batch, rng, train=True
        )
        metrics = {
            "loss": loss,
            "top1": _top_k(logits, labels, 1),
            "top5": _top_k(logits, labels, 5),
            "classifier_loss": class_loss,
            "classifier_top1": _top_k(class_logits, batch["label"], 1),
        }
        # The two parts have disjoint parameters, so one gradient of the sum trains both.
        return loss + class_loss, (batch_stats, metrics)

    def eval_outputs(self, params, batch_stats, batch, rng):
        loss, class_loss, logits, labels, class_logits, _ = self._objectives(
            params, batch_stats, batch, rng, train=False
        )
        return {
            "loss": loss[None],
            "top1": _top_k(logits, labels, 1)[None],
            "top5": _top_k(logits, labels, 5)[None],
            "classifier_loss": class_loss[None],
            "classifier_logits": class_logits,
            "label": batch["label"],
        }

    def summarize(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        logits, labels = outputs["classifier_logits"], outputs["label"]
        k = min(5, logits.shape[1])
        top5 = np.mean(np.any(np.argsort(-logits, axis=1)[:, :k] == labels[:, None], axis=1))
        classifier = classification_metrics(logits, labels, multilabel=False)
        return {
            **mean_of(outputs, "loss", "top1", "top5", "classifier_loss"),
            "classifier_top1": float(np.mean(logits.argmax(axis=1) == labels)),
            "classifier_top5": float(top5),
            "classifier_f1": classifier["f1"],
            "classifier_accuracy": classifier["accuracy"],
        }

    def load_pretrained(self, variables, source):
        loaded = read_weights(source, kind="simclr", config=self.model_cfg)
        if loaded.kind != "simclr":
            raise ConfigError(
                f"pretrained_weights {source!r} holds {loaded.kind!r}, not simclr weights"
            )
        params, report = merge_pretrained(
            variables["params"]["model"], loaded.variables["params"], source=source
        )
        stats, stats_report = merge_pretrained(
            variables["batch_stats"], loaded.variables["batch_stats"], source=source
        )
        print((report + stats_report).summary(loaded.origin), flush=True)
        classifier = variables["params"]["classifier"]
        return {"params": {"model": params, "classifier": classifier}, "batch_stats": stats}


SPEC = TaskSpec(
    name="simclr_pretrain",
    model_config=SimCLRConfig,
    loss_config=SimCLRLossConfig,
    data_config=CMRDataConfig,
    build=SimCLRTask,
)
