"""Validation through ``convert.load``, save/restore, export errors and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import golden
import jax
import numpy as np
import pytest
import torch

import convert
from convert import store
from convert.cli import main
from convert.reading import read_checkpoint
from convert.report import CheckpointMismatchError
from convert.rules import tensors_of, unwrap
from jaxecg.errors import CheckpointError

SIGNAL_ENCODER = "dev/checkpoints/ecg_signal_encoder"
DEV_VIT = {"img_size": (1, 12, 500), "embed_dim": 64, "depth": 2, "num_heads": 4}
TOKEN_VIT = {**DEV_VIT, "global_pool": "token"}
REPO = Path(__file__).resolve().parents[1]


def _signal_encoder_state() -> dict[str, np.ndarray]:
    return dict(tensors_of(unwrap(read_checkpoint(golden.checkpoint_path(SIGNAL_ENCODER)))))


def test_a_shape_mismatch_file_lists_every_mismatched_key(tmp_path: Path) -> None:
    state = _signal_encoder_state()
    state["blocks.0.mlp.fc1.weight"] = np.zeros((128, 64), np.float32)
    state["norm.weight"] = np.zeros(32, np.float32)
    path = tmp_path / "mismatch.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        convert.load(path, "ecg_encoder", TOKEN_VIT)
    message = str(err.value)
    assert "Shape mismatch for 2 key(s)" in message
    assert "blocks.0.mlp.fc1.weight: checkpoint (128, 64) vs model (256, 64)" in message
    assert "norm.weight: checkpoint (32,) vs model (64,)" in message
    assert [m[0] for m in err.value.report.mismatched] == ["blocks.0.mlp.fc1.weight", "norm.weight"]


def test_classifier_from_an_encoder_file_validates_like_the_reference() -> None:
    """Fine-tuning start: the reference loads while constructing the classifier (no fc_norm or
    attention_pool yet, timm's norm still there), so only its missing head counts: 2/32
    (6.2% <= 10%) loads. Restoring a trained classifier from it is refused."""
    path = golden.checkpoint_path(SIGNAL_ENCODER)
    config = {**DEV_VIT, "num_classes": 5}
    with pytest.raises(
        CheckpointMismatchError, match=r"Too many missing keys: 4/36 \(11.1% > 10.0%\)"
    ) as err:
        convert.load(path, "ecg_classifier", config, mode="restore")
    head = ("head.bias", "head.weight")
    assert err.value.report.missing == ("fc_norm.bias", "fc_norm.weight", *head)
    variables, report = convert.load(path, "ecg_classifier", config)
    assert (report.total, report.missing) == (32, head)
    assert report.initialised == ("fc_norm.bias", "fc_norm.weight", *head)
    assert "norm.weight" in report.matched and report.unexpected == ()  # counted, not loaded
    assert set(report.extra_loaded) == {
        "attention_pool.in_proj_bias",
        "attention_pool.in_proj_weight",
        "attention_pool.out_proj.bias",
        "attention_pool.out_proj.weight",
    }
    np.testing.assert_array_equal(variables["params"]["fc_norm"]["scale"], np.ones(64))
    np.testing.assert_array_equal(variables["params"]["head"]["bias"], np.zeros(5))
    state = _signal_encoder_state()
    np.testing.assert_array_equal(
        variables["params"]["attention_pool"]["k_proj"]["kernel"],
        state["attention_pool.in_proj_weight"][64:128].T,
    )
    with pytest.raises(
        CheckpointMismatchError, match=r"Strict loading: 2/32 .*head.bias, head.weight"
    ):
        convert.load(path, "ecg_classifier", config, strict=True)
    with pytest.raises(
        CheckpointMismatchError, match=r"Too many missing keys: 2/32 \(6.2% > 5.0%\)"
    ):
        convert.load(path, "ecg_classifier", config, missing_key_threshold=0.05)


def test_pos_embed_resize_is_opt_in_and_matches_the_reference() -> None:
    case_id = "dev/pos_embed/interpolate"
    case, arrays = golden.case(case_id), golden.arrays(case_id)
    state = _signal_encoder_state()
    state["pos_embed"] = arrays["checkpoint_pos_embed"]
    config = {**TOKEN_VIT, "img_size": tuple(case["model_img_size"])}
    with pytest.raises(
        CheckpointMismatchError, match=r"pos_embed: checkpoint \(1, 61, 64\) vs model \(1, 97, 64\)"
    ):
        convert.load(state, "ecg_encoder", config)
    variables, report = convert.load(state, "ecg_encoder", config, resize_pos_embed=True)
    golden.assert_matches(case_id, "new_pos_embed", variables["params"]["pos_embed"])
    assert report.notes == ("pos_embed resized from (1, 61, 64) to (1, 97, 64)",)


def test_save_restore_round_trip(tmp_path: Path) -> None:
    path = golden.checkpoint_path(SIGNAL_ENCODER)
    variables, report = convert.load(path, "ecg_encoder", TOKEN_VIT)
    out = convert.save(
        variables, tmp_path / "enc", kind="ecg_encoder", config=TOKEN_VIT, report=report
    )
    restored, kind, config = convert.restore(out)
    assert kind == "ecg_encoder" and config.to_dict()["global_pool"] == "token"
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    sidecar = json.loads((out / store.SIDECAR).read_text())
    assert sidecar["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["report"]["matched"] == list(report.matched)
    assert convert.LoadReport.from_dict(sidecar["report"]) == report
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ValueError, match="already exists"):
        convert.save(variables, out, kind="ecg_encoder", config=TOKEN_VIT)
    assert sorted(p.name for p in out.rglob("*")) == before
    assert os.listdir(tmp_path) == ["enc"]
    with pytest.raises(ValueError, match="not a convert.save directory"):
        convert.restore(tmp_path)


def test_export_names_every_problem_leaf() -> None:
    variables, _ = convert.load(golden.checkpoint_path(SIGNAL_ENCODER), "ecg_encoder", TOKEN_VIT)
    params = {k: v for k, v in variables["params"].items() if k != "norm"}
    params["cls_token"] = np.zeros((1, 1, 32), np.float32)
    with pytest.raises(ValueError) as err:
        convert.export({"params": params}, "ecg_encoder", TOKEN_VIT)
    message = str(err.value)
    assert "missing params/norm/scale" in message and "missing params/norm/bias" in message
    assert "params/cls_token: shape (1, 1, 32) vs model (1, 1, 64)" in message


def _cli_args(tmp_path: Path, embed_dim: int = 64) -> list[str]:
    """Convert the signal encoder into a token-pool ViT of ``embed_dim`` at ``tmp_path/converted``."""
    config = tmp_path / f"vit{embed_dim}.yaml"
    config.write_text(
        "img_size: [1, 12, 500]\ndepth: 2\nnum_heads: 4\nglobal_pool: token\n"
        f"embed_dim: {embed_dim}\n"
    )
    source = str(golden.checkpoint_path(SIGNAL_ENCODER))
    out = str(tmp_path / "converted")
    return [source, "--kind", "ecg_encoder", "--config", str(config), "--out", out]


def test_cli_writes_the_directory_and_prints_the_report(tmp_path: Path, capsys) -> None:
    args = _cli_args(tmp_path)
    out = tmp_path / "converted"
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "matched 30/30 (100.0% coverage)" in printed and f"saved ecg_encoder to {out}" in printed
    variables, kind, _ = convert.restore(out)
    assert kind == "ecg_encoder" and variables["params"]["pos_embed"].shape == (1, 61, 64)
    assert main(args) == 2  # the directory exists now: refused, untouched
    assert "already exists" in capsys.readouterr().err


def test_failed_cli_runs_leave_no_output_directory(tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(_cli_args(tmp_path, embed_dim=128)) == 2
    err = capsys.readouterr().err
    assert "error: Shape mismatch for 30 key(s)" in err
    assert "cls_token: checkpoint (1, 1, 64) vs model (1, 1, 128)" in err

    class FullDisk:
        @staticmethod
        def dumps(*args, **kwargs) -> str:
            raise OSError("No space left on device")

    # A failure after Orbax wrote the variables: the partial directory is removed too.
    monkeypatch.setattr(store, "json", FullDisk)
    assert main(_cli_args(tmp_path)) == 1  # a failed write, not bad input
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["vit128.yaml", "vit64.yaml"]


def test_python_dash_m_convert_fails_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "convert",
            str(tmp_path / "missing.pth"),
            "--kind",
            "cmr_encoder",
            "--out",
            str(out),
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    missing = repr(str(tmp_path / "missing.pth"))
    assert result.stderr.strip().splitlines() == [
        f"jaxecg convert: error: cannot read checkpoint {missing}: "
        + f"[Errno 2] No such file or directory: {missing}"
    ]
    assert not out.exists()


def test_a_prefixed_lightning_file_gets_a_hint_and_loads_with_strip_prefix(
    tmp_path: Path, capsys
) -> None:
    state = _signal_encoder_state()
    path = tmp_path / "lit.ckpt"
    torch.save({"state_dict": {f"model.{k}": torch.from_numpy(v) for k, v in state.items()}}, path)
    args = _cli_args(tmp_path)
    args[0] = str(path)
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("jaxecg convert: error: Too many missing keys: 30/30 (100.0%")
    assert "hint: the file holds the missing keys under the prefix 'model.'" in lines[-1]
    assert "--strip-prefix model." in lines[-1]
    assert err.count("blocks.0.attn.qkv.weight") == 2  # once missing, once unexpected (prefixed)
    assert not (tmp_path / "converted").exists()
    assert main([*args, "--strip-prefix", "model."]) == 0
    assert "matched 30/30 (100.0% coverage)" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="strip_prefix='net.': no key of the checkpoint"):
        convert.load(path, "ecg_encoder", TOKEN_VIT, strip_prefix="net.")


# Run the CLI, but SIGKILL the process once Orbax has written the variables into the
# partial directory (when the sidecar is about to be written): nothing can clean up.
_KILLED_CONVERT = """
import os, signal, sys
import convert.store as store
class KilledMidSave:
    @staticmethod
    def dumps(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
store.json = KilledMidSave
from convert.cli import main
main(sys.argv[1:])
"""


def test_a_killed_convert_leaves_no_debris_after_the_next_run(tmp_path: Path, capsys) -> None:
    """kill -9 cannot clean up: the next save to the same --out removes what it left."""
    args = _cli_args(tmp_path)
    args[0] = str(tmp_path / "encoder.npz")  # the same tensors; the subprocess needs no torch
    np.savez(args[0], **_signal_encoder_state())
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_CONVERT, *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    (debris,) = tmp_path.glob(".converted.partial-*")
    assert (debris / store.VARIABLES).is_dir() and not (tmp_path / "converted").exists()
    live = tmp_path / f".converted.partial-{socket.gethostname()}-{os.getpid()}-a1b2c3d4"
    live.mkdir()  # a save still running (this process): left alone
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["converted", "encoder.npz", live.name, "vit64.yaml"]
    )
    convert.restore(tmp_path / "converted")
