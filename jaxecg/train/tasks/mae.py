"""MAE pretraining of the ECG ViT (docs/reference.md#mae) with LitMAE's optimiser.

AdamW (β = 0.9, 0.95) over timm ``add_weight_decay`` groups — no decay for 1-D
tensors and biases, decay for everything else including ``cls_token`` and
``mask_token`` (the golden ``add_weight_decay_lit_mae`` table; the fixed
sin-cos tables are not parameters) — and the bolts warmup-cosine schedule in
real steps. Each step crops/augments the batch on device (pretraining settings,
docs/reference.md#ecg-augmentations) and draws a fresh mask from the step's rng.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxecg.config import Config, ConfigError
from jaxecg.data import ecg_augment_batch
from jaxecg.losses.reconstruction import ncc
from jaxecg.models.mae import MAE, MAEConfig
from jaxecg.train.config import ExperimentConfig
from jaxecg.train.optim import adamw, mae_decay_mask
from jaxecg.train.tasks.base import Batch, PyTree, Task, TaskSpec
from jaxecg.train.tasks.common import (
    ECGDataConfig,
    check_time_steps,
    ecg_datasets,
    mean_of,
    merge_pretrained,
)
from jaxecg.weights import read_weights


@dataclasses.dataclass(frozen=True)
class MAELossConfig(Config):
    """Nothing beyond the model's ``mask_ratio``/``ncc_weight``/``norm_pix_loss``."""


class MAETask(Task):
    """Masked reconstruction of augmented ECG crops; metrics loss and NCC."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.model_cfg: MAEConfig = self.model_config()
        check_time_steps(cfg.data.augment.time_steps, self.model_cfg.img_size)
        self.model = MAE(self.model_cfg)

    def datasets(self):
        return ecg_datasets(self.cfg.data)

    def _crops(self, rng: jax.Array, ecg: jax.Array, train: bool) -> jax.Array:
        return ecg_augment_batch(rng, ecg, self.cfg.data.augment, train)

    def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, PyTree]:
        k_params, k_mask = jax.random.split(rng)
        x = self._crops(rng, batch["ecg"], train=False)
        return {
            "params": self.model.init({"params": k_params, "masking": k_mask}, x)["params"],
            "batch_stats": {},
        }

    def optimizer(self, params: PyTree, *, steps_per_epoch: int, total_steps: int | None):
        schedule, total = self.main_schedule(steps_per_epoch, total_steps)
        return adamw(schedule, self.cfg.optim, decay_mask=mae_decay_mask(params)), schedule, total

    def _forward(self, params: PyTree, batch: Batch, rng: jax.Array, train: bool):
        k_aug, k_mask = jax.random.split(rng)
        x = self._crops(k_aug, batch["ecg"], train)
        out = self.model.apply({"params": params}, x, train=train, rngs={"masking": k_mask})
        return out.loss, ncc(x, out.reconstruction)

    def loss(self, params, batch_stats, batch, rng):
        loss, corr = self._forward(params, batch, rng, train=True)
        return loss, (batch_stats, {"loss": loss, "ncc": corr})

    def eval_outputs(self, params, batch_stats, batch, rng):
        loss, corr = self._forward(params, batch, rng, train=False)
        return {"loss": loss[None], "ncc": corr[None]}

    def summarize(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return mean_of(outputs, "loss", "ncc")

    def load_pretrained(self, variables, source):
        loaded = read_weights(source, kind="mae", config=self.model_cfg)
        if loaded.kind != "mae":
            raise ConfigError(
                f"pretrained_weights {source!r} holds {loaded.kind!r}, not mae weights"
            )
        params, report = merge_pretrained(
            variables["params"], loaded.variables["params"], source=source
        )
        print(report.summary(loaded.origin), flush=True)
        return {"params": params, "batch_stats": {}}


SPEC = TaskSpec(
    name="mae_pretrain",
    model_config=MAEConfig,
    loss_config=MAELossConfig,
    data_config=ECGDataConfig,
    build=MAETask,
)
