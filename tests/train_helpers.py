"""Tiny overrides of the four experiment configs and a runner for the training tests.

The overrides shrink models to the golden dev sizes (ViT 64/2/4 on 12x500 ECGs,
ResNet18 on 32-px frames) and the data to a few batches, so a run costs seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxecg.train.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

_VIT = [
    "model.embed_dim=64",
    "model.depth=2",
    "model.num_heads=4",
    "model.img_size=[1,12,500]",
    "data.augment.time_steps=500",
    "data.record_length=1000",
]
# Augmentation noise off: a falling loss then reflects learning, not the draw of the step.
_QUIET_ECG = [
    "data.augment.ft_surr_prob=0",
    "data.augment.jitter_sigma=0",
    "data.augment.rescaling_sigma=0",
]
_QUIET_CMR = [
    "data.augment.rotation=0",
    "data.augment.brightness=0",
    "data.augment.contrast=0",
    "data.augment.saturation=0",
    "data.augment.flip_prob=0",
]
_RESNET = ["model.preset=resnet18", "data.image_size=40", "data.augment.img_size=32"]

TINY = {
    "pretrain_mae_ecg": _VIT
    + [
        "model.decoder_embed_dim=32",
        "model.decoder_depth=1",
        "model.decoder_num_heads=4",
        "data.num_train=64",
        "data.num_eval=16",
        "train.batch_size=8",
    ],
    "finetune_ecg": _VIT + ["data.num_train=64", "data.num_eval=16", "train.batch_size=8"],
    # One batch of records, the same every step: SimCLR's loss over 12 steps of changing
    # batches swings with the batch drawn, and rounding alone flips a "loss falls" check.
    "pretrain_simclr_cmr": _RESNET + ["data.num_train=8", "data.num_eval=8", "train.batch_size=8"],
    "finetune_cmr": _RESNET + ["data.num_train=32", "data.num_eval=12", "train.batch_size=4"],
}
# Adam's eps is raised so an update is a smooth function of the gradient (with 1e-8 the
# first update is lr * sign(g), which flips on gradients that are zero up to rounding):
# the data-parallel equivalence test compares updates, and shares these programs.
QUIET = {
    "pretrain_mae_ecg": _QUIET_ECG + ["optim.lr=1e-3", "optim.eps=1e-3"],
    "finetune_ecg": _QUIET_ECG + ["optim.lr=1e-3", "optim.eps=1e-3"],
    "pretrain_simclr_cmr": _QUIET_CMR + ["optim.eps=1e-3"],
    "finetune_cmr": _QUIET_CMR + ["optim.lr=1e-3", "optim.eps=1e-3"],
}
STEPS = {"pretrain_mae_ecg": 24, "finetune_ecg": 24, "pretrain_simclr_cmr": 12, "finetune_cmr": 12}


def quiet_args(config: str) -> list[str]:
    """The overrides of a config's end-to-end run (shared by every test that compiles it)."""
    return [*QUIET[config], f"train.steps={STEPS[config]}"]


def run(config: str, workdir: Path, *overrides: str, resume: bool = False) -> int:
    """``jaxecg train configs/<config>.yaml`` with the tiny overrides (in this process)."""
    argv = [
        str(CONFIGS / f"{config}.yaml"),
        *TINY[config],
        f"train.workdir={workdir}",
        "train.progress_bar=false",
        "train.log_every=1",
        *overrides,
    ]
    return main([*argv, "--resume"] if resume else argv)


def records(workdir: Path, name: str = "metrics.jsonl") -> list[dict]:
    """The JSON lines of a run's metrics file."""
    return [json.loads(line) for line in (Path(workdir) / name).read_text().splitlines()]
