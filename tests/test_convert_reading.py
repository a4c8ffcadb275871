"""Reading checkpoints: never running their code, every format, clear errors on bad files."""

from __future__ import annotations

import collections
import io
import lzma
import pickle
import sys
import zipfile
from pathlib import Path

import golden
import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import convert
from convert.reading import CheckpointReadError, Inert, read_bytes, read_checkpoint
from convert.rules import tensors_of, unwrap

SIGNAL_ENCODER = "dev/checkpoints/ecg_signal_encoder"
DEV_VIT = {
    "img_size": (1, 12, 500),
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "global_pool": "token",
}


class _Payload:
    """Unpickling this would call ``exec`` and create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


class _NewObjPayload:
    """Pickled through NEWOBJ + BUILD (``__reduce_ex__`` protocol 2) of a foreign class."""

    def __init__(self) -> None:
        self.argv = ["rm", "-rf", "/"]


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    torch.save(
        {
            "state_dict": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
            "hyper_parameters": {"callback": _Payload(marker), "obj": _NewObjPayload()},
        },
        path,
    )


def test_code_in_a_checkpoint_never_runs(tmp_path: Path) -> None:
    path, marker = tmp_path / "evil.ckpt", tmp_path / "marker"
    _malicious_checkpoint(path, marker)

    # The weights_only path refuses the file ...
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    # ... and our reader (weights_only first, then the inert fallback) reads it inertly.
    checkpoint = read_checkpoint(path)
    assert not marker.exists()
    callback = checkpoint["hyper_parameters"]["callback"]
    assert isinstance(callback, Inert) and (callback.module, callback.name) == ("builtins", "exec")
    assert callback.args == (f"open({str(marker)!r}, 'w').close()",)
    obj = checkpoint["hyper_parameters"]["obj"]
    assert isinstance(obj, Inert) and obj.name == "_NewObjPayload"
    assert obj.state == {"argv": ["rm", "-rf", "/"]}
    np.testing.assert_array_equal(checkpoint["state_dict"]["w"], np.arange(6.0).reshape(2, 3))
    assert not marker.exists()


def test_code_in_an_xz_checkpoint_never_runs(tmp_path: Path) -> None:
    raw, marker = tmp_path / "evil.pth", tmp_path / "marker"
    _malicious_checkpoint(raw, marker)
    packed = tmp_path / "evil.pth.xz"
    packed.write_bytes(lzma.compress(raw.read_bytes()))
    assert tensors_of(unwrap(read_checkpoint(packed)))["w"].shape == (2, 3)
    assert not marker.exists()


class _Storage:
    """Pickled as a persistent id: storage "0" of 4 float32 values."""


class _OversizedView:
    """A tensor rebuild whose view reaches far past its 4-element storage."""

    def __reduce__(self):
        args = (_Storage(), 0, (1_000_000,), (1,), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _StoragePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _Storage) else None


def test_a_tensor_view_outside_its_storage_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    _StoragePickler(buffer, protocol=2).dump({"opaque": _NewObjPayload(), "w": _OversizedView()})
    path = tmp_path / "crafted.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3")
    with pytest.raises(
        CheckpointReadError, match=r"crafted.pth.*exceeds its storage of 4 elements"
    ):
        read_checkpoint(path)


def test_lightning_hyper_parameters_become_inert_records() -> None:
    checkpoint = read_checkpoint(golden.checkpoint_path("dev/checkpoints/ecg_classifier_no_pool"))
    norm_layer = checkpoint["hyper_parameters"]["norm_layer"]
    assert isinstance(norm_layer, Inert)
    assert (norm_layer.module, norm_layer.name) == ("functools", "partial")
    args = read_checkpoint(golden.checkpoint_path("dev/checkpoints/mae_pretrain_checkpoint"))[
        "args"
    ]
    assert (args.module, args.name) == ("argparse", "Namespace")
    assert args.state["patch_size"] == (1, 100)


def test_fallback_matches_torch_on_every_dtype_and_layout(tmp_path: Path) -> None:
    """Tensors the inert reader rebuilds itself equal torch's own, views and dtypes included."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "transposed": base.t(),  # a non-contiguous view sharing storage with "base"
        "base": base,
        "slice": base[1:3, 2:],
        "bf16": base.to(torch.bfloat16),
        "half": base.half(),
        "int": torch.arange(5),
        "bool": base > 10,
        "scalar": torch.tensor(7, dtype=torch.int64),
        "param": torch.nn.Parameter(torch.ones(3)),
    }
    path = tmp_path / "mixed.pt"
    torch.save({"tensors": tensors, "opaque": _NewObjPayload(), "tags": {"a", "b"}}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint["tags"] == {"a", "b"}  # safe builtins are rebuilt, not made inert
    read = checkpoint["tensors"]
    for name, tensor in tensors.items():
        expected = tensor.detach()
        if expected.dtype == torch.bfloat16:
            assert read[name].dtype == ml_dtypes.bfloat16
            expected = expected.float()
            np.testing.assert_array_equal(read[name].astype(np.float32), expected.numpy())
            continue
        assert read[name].dtype == expected.numpy().dtype, name
        np.testing.assert_array_equal(read[name], expected.numpy(), err_msg=name)


def test_weights_only_path_keeps_bfloat16(tmp_path: Path) -> None:
    path = tmp_path / "bf16.pt"
    torch.save({"w": torch.linspace(-2, 2, 7).to(torch.bfloat16)}, path)
    w = read_checkpoint(path)["w"]
    assert w.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(
        w.astype(np.float32), torch.linspace(-2, 2, 7).to(torch.bfloat16).float().numpy()
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".safetensors.xz"])
def test_safetensors_and_npz_load_like_the_torch_file(tmp_path: Path, suffix: str) -> None:
    state = tensors_of(unwrap(read_checkpoint(golden.checkpoint_path(SIGNAL_ENCODER))))
    path = tmp_path / f"encoder{suffix}"
    if suffix.startswith(".safetensors"):
        plain = tmp_path / "encoder.safetensors"
        save_file(state, str(plain))
        if suffix.endswith(".xz"):
            path.write_bytes(lzma.compress(plain.read_bytes()))
    else:
        np.savez(path, **state)
    ours, report = convert.load(path, "ecg_encoder", DEV_VIT)
    reference, _ = convert.load(golden.checkpoint_path(SIGNAL_ENCODER), "ecg_encoder", DEV_VIT)
    assert report.coverage == 1.0
    jax.tree.map(np.testing.assert_array_equal, ours, reference)


def _truncated(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_torch_file_names_the_file(tmp_path: Path) -> None:
    data = read_bytes(golden.checkpoint_path(SIGNAL_ENCODER))
    path = _truncated(tmp_path, "cut.pth", data)
    with pytest.raises(CheckpointReadError, match="cut.pth") as err:
        convert.load(path, "ecg_encoder", DEV_VIT)
    assert "truncated or corrupt" in str(err.value)


def test_truncated_xz_file_names_the_file(tmp_path: Path) -> None:
    path = _truncated(tmp_path, "cut.pth.xz", golden.checkpoint_path(SIGNAL_ENCODER).read_bytes())
    with pytest.raises(CheckpointReadError, match=r"cut\.pth\.xz.*truncated"):
        read_checkpoint(path)


def test_truncated_safetensors_and_missing_files_name_the_file(tmp_path: Path) -> None:
    plain = tmp_path / "w.safetensors"
    save_file({"w": np.ones((64, 64), np.float32)}, str(plain))
    cut = _truncated(tmp_path, "cut.safetensors", plain.read_bytes())
    with pytest.raises(CheckpointReadError, match="cut.safetensors"):
        read_checkpoint(cut)
    with pytest.raises(CheckpointReadError, match="nowhere.pth"):
        read_checkpoint(tmp_path / "nowhere.pth")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointReadError, match="garbage.ckpt"):
        read_checkpoint(garbage)


def test_in_memory_torch_state_dicts_are_accepted() -> None:
    buffer = io.BytesIO(read_bytes(golden.checkpoint_path(SIGNAL_ENCODER)))
    checkpoint = torch.load(buffer, weights_only=True)
    assert isinstance(checkpoint["model"]["cls_token"], torch.Tensor)
    variables, report = convert.load(checkpoint, "ecg_encoder", DEV_VIT)
    assert report.source == "<state dict>" and report.coverage == 1.0
    np.testing.assert_array_equal(
        variables["params"]["cls_token"], checkpoint["model"]["cls_token"].numpy()
    )


def test_random_bytes_never_get_the_advice_to_run_the_file(tmp_path: Path) -> None:
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointReadError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "random.pth" in message and "(truncated or corrupt?)" in message
    assert "weights_only" not in message and "arbitrary code" not in message


def test_reading_a_torch_file_without_torch_says_which_extra_to_install(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(2)}, path)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if absent
    with pytest.raises(CheckpointReadError) as err:
        read_checkpoint(path)
    assert "needs torch, which is not installed: pip install 'jaxecg[convert]'" in str(err.value)
    assert "ModuleNotFoundError" not in str(err.value)
