"""The reference's weight-loading decisions (golden ``dev/mixin/*``) reproduced on torch names.

Each case names a model spec (its target key/shape set, ``mixin_targets``) and a
checkpoint; the original ``PretrainedWeightsMixin`` either raised or loaded with
given counts. We read every file with our reader (inertly where torch's
``weights_only`` refuses it), so our outcome is the ``weights_only_false_torch_2_4``
regime's: the ``torch_default_weights_only_true`` regime differs only where torch
refused to unpickle the file at all, which :func:`test_weights_only_refusals_are_read_inertly`
pins down.
"""

from __future__ import annotations

import functools
import io
import pickle

import golden
import numpy as np
import pytest
import torch

from convert.reading import read_bytes, read_checkpoint
from convert.report import CheckpointMismatchError, validate
from convert.rules import RULES, Rule, tensors_of, unwrap

MIXIN_KIND = {
    "ECGEncoder": "ecg_encoder",
    "ECGClassifier": "ecg_classifier",
    "MaskedAutoencoderViT": "mae",
    "CMREncoder": "cmr_encoder",
    "CMRClassifier": "cmr_classifier",
}
MIXIN_MODE = {"constructor": "finetune", "post_construction": "restore"}
MIXIN_CASES = golden.case_ids("dev/mixin/")
TORCH_LOAD_REFUSED = "torch.load"


@functools.cache
def _state(checkpoint_id: str) -> dict[str, np.ndarray]:
    return tensors_of(unwrap(read_checkpoint(golden.checkpoint_path(checkpoint_id))))


def _expected(case: dict, regime: str) -> dict:
    expected = case["expected"][regime]
    if expected == "same":
        other = next(r for r in case["expected"] if r != regime)
        expected = case["expected"][other]
    return expected


def test_there_are_51_mixin_cases() -> None:
    assert len(MIXIN_CASES) == 51


@pytest.mark.parametrize("case_id", MIXIN_CASES)
def test_mixin_case(case_id: str) -> None:
    case = golden.case(case_id)
    spec = golden.manifest()["mixin_targets"][case["model_spec"]]
    expected = _expected(case, "weights_only_false_torch_2_4")
    kind = MIXIN_KIND[spec["class"]]
    targets = {k: tuple(v) for k, v in spec["target_keys"].items()}
    rule = RULES[kind].for_mode(MIXIN_MODE[spec["construction"]])

    found = rule.match(targets, _state(case["checkpoint"]))
    report = found.report(source=case["checkpoint"], kind=kind)

    stats = expected["stats"]
    assert report.total == stats["total_keys"]
    assert (
        len(report.matched)
        == stats["matched_keys"]
        == expected.get("n_loaded", len(report.matched))
    )
    assert list(report.missing) == stats["missing_keys"]
    assert list(report.unexpected) == stats["unexpected_keys"]
    assert len(report.mismatched) == len(stats["shape_mismatches"])
    defaults = case["defaults"]
    if expected["raised"]:
        with pytest.raises(CheckpointMismatchError) as err:
            validate(
                report,
                strict=defaults["strict"],
                missing_key_threshold=defaults["missing_key_threshold"],
            )
        assert str(err.value).startswith(expected["message_prefix"])
        assert isinstance(
            err.value, RuntimeError
        )  # the reference's exception type still catches it
        for key in report.missing:
            assert key in str(err.value)
    else:
        validate(
            report,
            strict=defaults["strict"],
            missing_key_threshold=defaults["missing_key_threshold"],
        )


# The 94 MB resnet50 file is read once, by its parity test in test_convert_golden.py.
SMALL_CHECKPOINTS = sorted(
    c for c in golden.manifest()["checkpoints"] if not c.endswith("resnet50")
)


@pytest.mark.parametrize("checkpoint_id", SMALL_CHECKPOINTS)
def test_weights_only_refusals_are_read_inertly(checkpoint_id: str) -> None:
    """Where torch >= 2.6 refuses a file (the other regime's UnpicklingError), we still read it."""
    info = golden.manifest()["checkpoints"][checkpoint_id]
    data = read_bytes(golden.checkpoint_path(checkpoint_id))
    if info["weights_only_load"]["ok"]:
        torch.load(io.BytesIO(data), weights_only=True)
    else:
        with pytest.raises(
            pickle.UnpicklingError, match=info["weights_only_load"]["message_prefix"][:40]
        ):
            torch.load(io.BytesIO(data), weights_only=True)
    state = _state(checkpoint_id)
    assert {k: list(v.shape) for k, v in state.items()} == {
        k: v["shape"] for k, v in info["tensors"].items()
    }


def test_torch_load_refusals_match_the_other_regime() -> None:
    """Every case that failed at torch.load under weights_only=True did so for a refused file."""
    for case_id in MIXIN_CASES:
        case = golden.case(case_id)
        default = _expected(case, "torch_default_weights_only_true")
        ok = golden.manifest()["checkpoints"][case["checkpoint"]]["weights_only_load"]["ok"]
        assert (default.get("stage") == TORCH_LOAD_REFUSED) == (not ok), case_id
        if ok:
            assert default == _expected(case, "weights_only_false_torch_2_4"), case_id


def test_unwrap_order_and_repetition() -> None:
    inner = {"w": np.zeros(1)}
    assert unwrap({"model": {"state_dict": inner}, "state_dict": {"network": inner}}) is inner
    assert unwrap({"network": {"model": inner}}) is inner
    assert unwrap(inner) is inner
    with pytest.raises(ValueError, match="expected a checkpoint mapping"):
        unwrap([inner])


def test_cmr_blind_cut_and_ddp_prefix() -> None:
    rule = RULES["cmr_encoder"]
    assert rule.names("encoder.4.0.conv1.weight")[0] == "encoder_imaging.4.0.conv1.weight"
    # The blind cut of len("encoder.") also applies to keys that do not start with it.
    assert rule.names("head.fc1.weight")[0] == "encoder_imaging..weight"
    source = {"module.encoder.0.weight": np.zeros((2, 3))}
    found = rule.match({"encoder.0.weight": (2, 3)}, source)
    assert found.matched == {"encoder.0.weight": "module.encoder.0.weight"}


def test_every_mismatch_is_reported_with_both_shapes() -> None:
    targets = {"qkv.weight": (2, 3), "proj.bias": (4,), "norm.weight": (1,)}
    source = {"qkv.weight": np.zeros((3, 2)), "proj.bias": np.zeros(5), "norm.weight": np.zeros(1)}
    report = Rule().match(targets, source).report(source="f.pth", kind="generic")
    with pytest.raises(CheckpointMismatchError) as err:
        validate(report)
    message = str(err.value)
    assert "Shape mismatch for 2 key(s)" in message
    assert "qkv.weight: checkpoint (3, 2) vs model (2, 3)" in message
    assert "proj.bias: checkpoint (5,) vs model (4,)" in message
    assert "norm.weight" not in message


def test_strict_rejects_any_missing_key() -> None:
    targets = {f"k{i}": (1,) for i in range(20)}
    source = {f"k{i}": np.zeros(1) for i in range(19)}
    report = Rule().match(targets, source).report(source="f.pth", kind="generic")
    validate(report)  # 1/20 = 5% is under the default threshold
    with pytest.raises(CheckpointMismatchError, match="Strict loading: 1/20 missing key"):
        validate(report, strict=True)
    with pytest.raises(
        CheckpointMismatchError, match=r"Too many missing keys: 1/20 \(5.0% > 4.0%\)"
    ):
        validate(report, missing_key_threshold=0.04)
