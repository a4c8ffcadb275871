"""Read checkpoint files into nested Python containers with numpy leaves, never running their code.

Formats: ``torch.save`` files (``.pth``/``.pt``/``.ckpt``), ``.safetensors`` and
``.npz``; any of them may be ``.xz``-compressed (recognised by its magic bytes).

A ``torch.save`` file is first given to ``torch.load(weights_only=True)``. When
that refuses the file because it pickles non-tensor objects (Lightning
``hyper_parameters`` holding ``functools.partial``, ``argparse.Namespace`` in
``args``), :class:`InertUnpickler` reads it instead: it rebuilds tensors from the
archive's raw storages itself and turns every other global the pickle names into
an :class:`Inert` record. It never imports a module or calls a function named by
the file, so a malicious ``__reduce__`` is only recorded, not run.
"""

from __future__ import annotations

import io
import lzma
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import ml_dtypes
import numpy as np

from jaxecg.errors import CheckpointError

_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZIP_MAGIC = b"PK\x03\x04"
_NPZ_SUFFIXES = (".npz",)
_SAFETENSORS_SUFFIXES = (".safetensors",)


class CheckpointReadError(CheckpointError):
    """A checkpoint file is missing, truncated, corrupt or of an unknown format."""


TORCH_MISSING = (
    "reading a PyTorch file (.pth/.pt/.ckpt) needs torch, which is not installed: "
    "pip install 'jaxecg[convert]' (or convert it to .safetensors/.npz where torch is)"
)


# ------------------------------------------------------------------ inert placeholders


class Inert:
    """Stand-in for an object of a global the reader refuses to resolve.

    Subclasses are made per global (``module``, ``name``); instances record what the
    pickle would have passed to the real callable, so a report can show it.
    """

    module: str = ""
    name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # NEWOBJ calls cls.__new__(cls, *args); record instead of constructing anything.
        obj = object.__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.items = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # REDUCE calls cls(*args); __new__ already recorded them.
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"<inert {self.module}.{self.name}>"


def _inert_class(module: str, name: str) -> type[Inert]:
    return type(f"Inert[{module}.{name}]", (Inert,), {"module": module, "name": name})


# ------------------------------------------------------------------ tensor rebuilding

_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,
}
_TORCH_DTYPES: dict[str, Any] = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
    "complex64": np.complex64,
    "complex128": np.complex128,
}


class _DType:
    """A torch storage class or dtype named by the pickle, reduced to its numpy dtype."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: Any, stride: Any, *_: Any
) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a strided view of the storage, copied out.

    The view is bounds-checked first: ``as_strided`` would otherwise read whatever
    memory a crafted size/stride points at.
    """
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or min((*size, *stride, offset), default=0) < 0:
        raise pickle.UnpicklingError(f"invalid tensor view: size {size}, stride {stride}")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.size:
            raise pickle.UnpicklingError(
                f"tensor view (offset {offset}, size {size}, stride {stride}) exceeds its "
                f"storage of {storage.size} elements"
            )
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * item for s in stride)
    )
    return np.array(view)


def _rebuild_tensor_v3(
    storage: np.ndarray,
    offset: int,
    size: Any,
    stride: Any,
    _rg: Any,
    _hooks: Any,
    dtype: _DType,
    *_: Any,
) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v3``: untyped storage reinterpreted as ``dtype``."""
    return _rebuild_tensor(storage.view(dtype.dtype), offset, size, stride)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


def _rebuild_from_type(func: Callable[..., Any], _new_type: Any, args: Any, _state: Any) -> Any:
    """``torch._tensor._rebuild_from_type_v2``: ``func`` is always one of this module's globals."""
    return func(*args)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``; other codecs are refused."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a checkpoint")
    return text.encode("latin1")


def _safe_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "bytearray"): bytearray,
        ("_codecs", "encode"): _latin1_encode,
        ("torch", "Size"): tuple,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("torch.nn.parameter", "Parameter"): _rebuild_parameter,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        table[("torch", name)] = _DType(dtype)
    table[("torch.storage", "UntypedStorage")] = _DType(np.uint8)
    for name, dtype in _TORCH_DTYPES.items():
        table[("torch", name)] = _DType(dtype)
    return table


_SAFE_GLOBALS = _safe_globals()
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _wrap(func: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args: func(*args)


class InertUnpickler(pickle.Unpickler):
    """Unpickles a ``torch.save`` zip archive's ``data.pkl`` without resolving foreign globals.

    Tensors become numpy arrays read from the archive's ``data/<key>`` records; the
    handful of containers and tensor rebuild functions above map to local, fixed
    implementations; every other global becomes an :class:`Inert` subclass.
    """

    def __init__(self, data: bytes, read_record: Callable[[str], bytes], big_endian: bool) -> None:
        super().__init__(io.BytesIO(data))
        self._read_record = read_record
        self._big_endian = big_endian
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's) spell builtins the Python 2 way.
        module = _PY2_MODULES.get(module, module)
        found = _SAFE_GLOBALS.get((module, name))
        if found is None:
            return _inert_class(module, name)
        # Hand out fresh objects (builtin types are immutable), so a BUILD opcode
        # aimed at a global can never alter this module's own functions or tables.
        if isinstance(found, _DType):
            return _DType(found.dtype)
        if isinstance(found, type):
            return found
        return _wrap(found)

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _DType):
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key not in self._storages:
            raw = self._read_record(f"data/{key}")
            dtype = storage_type.dtype
            if self._big_endian and dtype.itemsize > 1:
                array = np.frombuffer(raw, dtype=dtype.newbyteorder(">")).astype(dtype)
            else:
                array = np.frombuffer(raw, dtype=dtype)
            self._storages[key] = array
        return self._storages[key]


# ------------------------------------------------------------------ torch files


def to_numpy(value: Any) -> Any:
    """torch tensors (anywhere in nested dicts/lists) → numpy arrays; other leaves unchanged.

    Without torch imported there can be no tensors, so numpy state dicts need no torch.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            # numpy has no bfloat16: reinterpret the bits as ml_dtypes.bfloat16.
            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
    if isinstance(value, dict):
        return type(value)((k, to_numpy(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(v) for v in value)
    return value


def _read_torch_inert(data: bytes) -> Any:
    """The fallback reader: a ``torch.save`` zip archive through :class:`InertUnpickler`."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointReadError(
                f"expected one data.pkl in the torch archive, found {len(pickles)}"
            )
        root = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        big_endian = (
            f"{root}byteorder" in names and archive.read(f"{root}byteorder").strip() == b"big"
        )
        unpickler = InertUnpickler(
            archive.read(pickles[0]), lambda rec: archive.read(root + rec), big_endian
        )
        return unpickler.load()


def _read_torch(data: bytes) -> Any:
    try:
        import torch
    except ImportError:
        raise CheckpointReadError(TORCH_MISSING) from None

    try:
        return to_numpy(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as err:
        # weights_only refused a non-tensor global: read it inertly instead.
        if not data.startswith(_ZIP_MAGIC):
            # Not a zip archive: a legacy pickle holding more than tensors, or garbage.
            raise CheckpointReadError(
                "not a readable torch.save file: neither a zip archive nor a legacy pickle "
                f"of tensors (truncated or corrupt?): {_torch_reason(err)}"
            ) from err
        return _read_torch_inert(data)


_WEIGHTS_ONLY_DETAIL = re.compile(
    r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", re.DOTALL
)


def _torch_reason(err: BaseException) -> str:
    """torch's message without its advice to load with ``weights_only=False``.

    That advice means "run the code in this file"; for a corrupt or untrusted file it is
    the one thing never to do, so only the unpickler's own finding is kept.
    """
    text = str(err)
    if "weights_only" not in text:
        return text
    found = _WEIGHTS_ONLY_DETAIL.search(text)
    detail = found.group(1).strip() if found else ""
    return detail or "the pickle holds objects other than tensors and containers"


# ------------------------------------------------------------------ entry point


def _read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return dict(load(data))


def _read_npz(data: bytes) -> dict[str, np.ndarray]:
    # allow_pickle=False: object arrays would unpickle arbitrary data.
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, ``.xz``-decompressed when it starts with the xz magic."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointReadError(f"cannot read checkpoint {str(path)!r}: {err}") from err
    if data.startswith(_XZ_MAGIC):
        try:
            data = lzma.decompress(data)
        except lzma.LZMAError as err:
            raise CheckpointReadError(
                f"checkpoint {str(path)!r} is a corrupt or truncated .xz file: {err}"
            ) from err
    return data


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".xz"]
    last = suffixes[-1] if suffixes else ""
    if last in _SAFETENSORS_SUFFIXES:
        return "safetensors"
    if last in _NPZ_SUFFIXES:
        return "npz"
    return "torch"


def read_checkpoint(path: str | Path) -> Any:
    """Everything the file holds: nested dicts/lists, numpy arrays, :class:`Inert` records.

    Raises :class:`CheckpointReadError` naming the file when it is missing,
    truncated, corrupt or not a checkpoint.
    """
    path = Path(path)
    data = read_bytes(path)
    kind = _format_of(path)
    readers = {"safetensors": _read_safetensors, "npz": _read_npz, "torch": _read_torch}
    try:
        return readers[kind](data)
    except CheckpointReadError as err:
        raise CheckpointReadError(f"checkpoint {str(path)!r}: {err}") from err
    except Exception as err:  # every reader failure becomes one clear error naming the file
        raise CheckpointReadError(
            f"cannot read checkpoint {str(path)!r} as a {kind} file "
            f"(truncated or corrupt?): {type(err).__name__}: {_torch_reason(err)}"
        ) from err
