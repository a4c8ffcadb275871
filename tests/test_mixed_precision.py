"""``train.mixed_precision=true`` as users get it: the train and eval steps that
``jaxecg.train.loop.setup`` compiles, lowered to StableHLO, run every matmul and
convolution of the model on bf16 operands; the bf16 MAE and SimCLR losses stay within
2 % of fp32 on the same inputs; ``train.remat`` and conflicting settings reach the model.

Models are the smallest that still have every layer kind (ViT 32/1/2 on 12 x 200 ECGs,
ResNet18 on 16-px frames); each task is set up once and lowered, not compiled.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from train_helpers import CONFIGS

from jaxecg.config import ConfigError
from jaxecg.train.config import load_config
from jaxecg.train.loop import setup
from jaxecg.train.tasks import get_task

_DATA = ["data.num_train=16", "data.num_eval=8", "train.batch_size=8", "train.progress_bar=false"]
_VIT = [
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.img_size=[1,12,200]",
    "data.augment.time_steps=200",
    "data.record_length=400",
]
_RESNET = ["model.preset=resnet18", "data.image_size=32", "data.augment.img_size=16"]
SMALL = {
    "pretrain_mae_ecg": _VIT
    + ["model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2"],
    "finetune_ecg": _VIT,
    "pretrain_simclr_cmr": _RESNET,
    "finetune_cmr": _RESNET,
}

# stablehlo.dot_general / stablehlo.convolution: operand types, result type, location.
_OP = re.compile(
    r"stablehlo\.(?:dot_general|convolution)\b.*:\s*\((tensor<[^>]*>),\s*(tensor<[^>]*>)\)"
    r"\s*->\s*(tensor<[^>]*>)\s*loc\(#(loc\d+)\)"
)
_LOC = re.compile(r'^#(loc\d+) = loc\("([^"]*)"', re.MULTILINE)
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*$")  # a Flax submodule: blocks_0, conv2, qkv, ...


def _config(name: str, *overrides: str):
    return load_config(CONFIGS / f"{name}.yaml", [*SMALL[name], *_DATA, *overrides])


def _shape(tensor: str) -> tuple[list[int], str]:
    *dims, dtype = tensor[len("tensor<") : -1].split("x")
    return [int(d) for d in dims], dtype


def _ops(lowered: jax.stages.Lowered) -> list[dict]:
    """Every dot_general/convolution: operand dtypes, multiply-adds and its name stack."""
    text = lowered.as_text(debug_info=True)
    names = dict(_LOC.findall(text))
    ops = []
    for lhs, rhs, out, loc in _OP.findall(text):
        (lhs_dims, lhs_dtype), (rhs_dims, rhs_dtype) = _shape(lhs), _shape(rhs)
        out_dims, _ = _shape(out)
        # multiply-adds = output size x contracted size (both operands' product over it).
        macs = int(np.sqrt(np.prod(lhs_dims) * np.prod(rhs_dims) * np.prod(out_dims)))
        ops.append({"dtypes": {lhs_dtype, rhs_dtype}, "macs": macs, "name": names.get(loc, "")})
    return ops


def _in_model(name: str) -> bool:
    """Whether the op was traced inside a Flax module (a plain submodule name in its stack)."""
    return any(_MODULE_NAME.match(part) for part in name.split("/")[1:-1])


@pytest.fixture(scope="module", params=list(SMALL))
def lowered_steps(request):
    """``(config name, run, {"train": ops, "eval": ops})`` with mixed precision."""
    run = setup(_config(request.param, "train.mixed_precision=true"))
    batch = next(run.train_iter)
    steps = {
        "train": run.train_step.lower(run.state, batch, run.seed_key),
        "eval": run.eval_step.lower(run.state, next(iter(run.eval_batches()))[0], run.seed_key),
    }
    return request.param, run, batch, {k: _ops(v) for k, v in steps.items()}


@pytest.mark.parametrize("step", ["train", "eval"])
def test_every_model_matmul_and_convolution_runs_in_bf16(lowered_steps, step: str) -> None:
    name, run, _, all_ops = lowered_steps
    ops = all_ops[step]
    model_ops = [op for op in ops if _in_model(op["name"])]
    assert len(model_ops) >= 8, f"{name}: found only {len(model_ops)} model ops"
    fp32 = [op for op in model_ops if op["dtypes"] != {"bf16"}]
    assert not fp32, f"{name} {step}: model ops not on bf16 operands: {fp32[:3]}"
    # Outside the model (the CMR augmentation's crop/resize runs in the compute dtype too)
    # only small products stay fp32, such as the NT-Xent logits (fp32 by design).
    smallest_model_op = min(op["macs"] for op in model_ops)
    others = [op for op in ops if not _in_model(op["name"])]
    unexpected = [
        op
        for op in others
        if op["dtypes"] != {"bf16"} and op["macs"] > min(smallest_model_op, 2**16)
    ]
    assert not unexpected, f"{name} {step}: large fp32 ops outside the model: {unexpected[:3]}"
    # The state the step updates keeps fp32 parameters and optimiser moments.
    float_leaves = [x for x in jax.tree.leaves(run.state) if np.issubdtype(x.dtype, np.floating)]
    assert {x.dtype for x in float_leaves} == {np.dtype(np.float32)}


# Indirect: reuses the module-scoped set-up of these two tasks.
@pytest.mark.parametrize(
    "lowered_steps", ["pretrain_mae_ecg", "pretrain_simclr_cmr"], indirect=True
)
def test_bf16_loss_within_two_percent_of_fp32(lowered_steps) -> None:
    name, run, batch, _ = lowered_steps
    fp32_task = get_task(run.cfg.task).build(_config(name))
    rng = jax.random.fold_in(run.seed_key, 3)
    state = run.state

    def loss(task):
        return jax.jit(task.loss)(state.params, state.batch_stats, batch, rng)[1][1]["loss"]

    bf16, fp32 = float(loss(run.task)), float(loss(fp32_task))
    assert run.task.model_cfg.dtype == "bfloat16" and fp32_task.model_cfg.dtype == "float32"
    assert np.isfinite(bf16) and bf16 == pytest.approx(fp32, rel=0.02)


@pytest.mark.parametrize("name", ["pretrain_mae_ecg", "finetune_ecg"])
def test_train_settings_reach_the_model(name: str) -> None:
    task = get_task(_config(name).task).build(
        _config(name, "train.mixed_precision=true", "train.remat=true")
    )
    assert (task.model_cfg.dtype, task.model_cfg.param_dtype) == ("bfloat16", "float32")
    assert task.model_cfg.remat and task.model.config == task.model_cfg


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("finetune_cmr", ["train.remat=true"], "CMRClassifierConfig has no transformer blocks"),
        (
            "pretrain_mae_ecg",
            ["train.mixed_precision=true", "model.dtype=float16"],
            "model.dtype is 'float16'",
        ),
    ],
)
def test_conflicting_train_settings_are_errors(name: str, overrides, message: str) -> None:
    cfg = _config(name, *overrides)
    with pytest.raises(ConfigError, match=message):
        get_task(cfg.task).build(cfg)
