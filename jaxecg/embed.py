"""``jaxecg embed SOURCE DATA --out DIR``: the encoder's features of every record of a dataset.

``SOURCE`` is anything :func:`~jaxecg.encoders.load_encoder` reads (a PyTorch checkpoint
with ``--kind``, an Orbax directory, or a preset name with ``--kind``). ``DATA`` is a
built-in dataset (``synthetic-ecg``, ``synthetic-cmr``) or a directory written by
``jaxecg preprocess`` (all its splits, train → val → test, or ``--split``).

Output in ``DIR``::

    embeddings.npy   (N, D) float32, row i = record i in DATA's order
    index.csv        row, split, record_id, label (one line per row of embeddings.npy)
    embed.json       what was embedded with what (the run's signature)

Batches are sharded over every device of every process (a ``("data",)`` mesh,
parameters replicated); with several processes (after ``jax.distributed.initialize``)
each gathers the features and process 0 alone writes the files.
Work is cut into chunks of ``--chunk-size`` records, each written atomically to
``DIR/chunks/`` as soon as it is done; an interrupted run started again with the
same arguments skips the finished chunks, and the final files are assembled (and the
chunks removed) only when every chunk exists, so a resumed run writes the same bytes.
SIGINT/SIGTERM finish and write the chunk in flight, then stop (exit 130/143).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxecg.errors import UsageError, run_command
from jaxecg.interrupts import Interrupted, stop_requests

FORMAT = "jaxecg.embeddings"
VERSION = 1
EMBEDDINGS = "embeddings.npy"
INDEX = "index.csv"
SIGNATURE = "embed.json"
CHUNKS = "chunks"
BUILTIN = ("synthetic-ecg", "synthetic-cmr")


@dataclasses.dataclass(frozen=True)
class Records:
    """Every record of a dataset in output order.

    ``entries[i] = (split, source, index)``: record ``i`` is ``source[index]`` (a dict
    with ``"ecg"`` ``(12, T)`` or ``"image"`` ``(H, W, 3)``, and ``"label"``).
    ``description`` is JSON-safe and identifies the data in the run's signature.
    """

    modality: str
    entries: list[tuple[str, Any, int]]
    description: dict[str, Any]

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, i: int) -> tuple[np.ndarray, Any, str, str]:
        """``(array, label, split, record_id)`` of record ``i``."""
        split, source, index = self.entries[i]
        record = source[index]
        if split == "synthetic":
            record_id = f"{self.description['name']}-{index:06d}"
        else:
            record_id = source.record_name(index)
        return record[self.modality_key], record["label"], split, record_id

    @property
    def modality_key(self) -> str:
        return "ecg" if self.modality == "ecg" else "image"


def open_data(
    data: str, *, num_records: int = 256, seed: int = 0, splits: list[str] | None = None
) -> Records:
    """The records of ``data``: a built-in name or a ``jaxecg preprocess`` directory.

    ``num_records``/``seed`` size the built-in synthetic sets; ``splits`` selects a
    dataset directory's splits (default: all, in train, val, test order).
    """
    from jaxecg.data import SyntheticCMRSource, SyntheticECGSource, load_split, read_manifest
    from jaxecg.data.dataset import SPLITS

    if data in BUILTIN:
        if num_records <= 0:
            raise UsageError(f"--num-records must be positive, got {num_records}")
        modality = data.split("-")[1]
        source_cls = SyntheticECGSource if modality == "ecg" else SyntheticCMRSource
        source = source_cls(num_records, seed=seed)
        entries = [("synthetic", source, i) for i in range(num_records)]
        return Records(modality, entries, {"name": data, "num_records": num_records, "seed": seed})
    directory = Path(data)
    if not directory.is_dir():
        raise UsageError(
            f"DATA {data!r} is neither a built-in dataset {list(BUILTIN)} nor a directory"
        )
    manifest = read_manifest(directory)
    chosen = splits or [s for s in SPLITS if manifest["splits"].get(s, {}).get("count", 0)]
    unknown = [s for s in chosen if s not in manifest["splits"]]
    if unknown:
        raise UsageError(
            f"--split {unknown} not in {directory}; it has {sorted(manifest['splits'])}"
        )
    entries = []
    for split in chosen:
        source = load_split(directory, split)
        entries += [(split, source, i) for i in range(len(source))]
    if not entries:
        raise UsageError(f"{directory}: no records in split(s) {chosen}")
    description = {"name": str(directory.absolute()), "splits": chosen}
    return Records("ecg", entries, description)


# ---------------------------------------------------------------------------- the run


def _fingerprint(params: Any) -> str:
    """sha256 over the parameter values: a resumed run must use the very same weights."""
    import jax

    digest = hashlib.sha256()
    for path, leaf in jax.tree.leaves_with_path(params):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def describe_encoder(encoder: Any) -> dict[str, Any]:
    """JSON-safe identity of an encoder: kind, config, input size and a hash of its weights."""
    return {
        "kind": encoder.kind,
        "config": encoder.config.to_dict(),
        "image_size": encoder.image_size,
        "params_sha256": _fingerprint(encoder.params),
    }


def signature(
    encoder: Any, records: Records, *, batch_size: int, chunk_size: int
) -> dict[str, Any]:
    """What makes two runs write the same files (checked before resuming)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "encoder": describe_encoder(encoder),
        "data": records.description,
        "num_records": len(records),
        "feature_dim": encoder.feature_dim,
        "batch_size": batch_size,
        "chunk_size": chunk_size,
    }


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary sibling renamed into place: ``path`` is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_npy(array: np.ndarray, f: io.BufferedWriter) -> None:
    np.save(f, array)


def _chunk_path(out: Path, chunk: int) -> Path:
    return out / CHUNKS / f"chunk_{chunk:06d}.npy"


def _label_text(label: Any) -> str:
    label = np.asarray(label)
    return str(label.item()) if label.ndim == 0 else " ".join(f"{v:g}" for v in label.ravel())


class BatchedFeatures:
    """The encoder's features of runs of records, in global batches sharded over every device.

    ``batch_size``: global batch, a positive multiple of the device count (default 8 per
    device). ECG records are cut to the encoder's input length by the evaluation crop,
    CMR frames go through :meth:`Encoder.preprocess` inside the compiled function. The
    last batch is padded with copies of its last record and their rows dropped, so every
    record counts and one compiled program serves every batch of every dataset.
    """

    def __init__(self, encoder: Any, *, batch_size: int | None = None):
        import jax

        from jaxecg.compile_options import compiler_options
        from jaxecg.devices import batch_sharding, make_mesh, replicated

        mesh = make_mesh()
        devices = mesh.devices.size
        batch_size = 8 * devices if batch_size is None else batch_size
        if batch_size <= 0 or batch_size % devices:
            raise UsageError(
                f"--batch-size {batch_size} must be a positive multiple of the {devices} devices"
            )
        self.encoder, self.batch_size = encoder, batch_size
        self._params = jax.device_put(encoder.params, replicated(mesh))
        self._sharding = batch_sharding(mesh)
        self._compiled = jax.jit(
            self._features,
            out_shardings=self._sharding,
            compiler_options=compiler_options(resnet=encoder.kind == "cmr"),
        )
        self._time_steps = encoder.config.img_size[2] if encoder.kind == "ecg" else None

    def _features(self, params: Any, x: Any) -> Any:
        if self.encoder.kind == "cmr":
            x = self.encoder.preprocess(x)
        return self.encoder.apply(params, x)

    def batches(
        self, records: Records, start: int, stop: int
    ) -> Iterator[tuple[np.ndarray, list[Any]]]:
        """``((n, D) float32 features, n labels)`` of ``records[start:stop]``, batch by batch
        (each record is loaded once)."""
        from jaxecg.data.augment_ecg import crop
        from jaxecg.devices import from_host, to_host

        if self.encoder.kind != records.modality:
            raise UsageError(
                f"a {self.encoder.kind.upper()} encoder cannot embed "
                f"{records.modality.upper()} records"
            )
        for lo in range(start, stop, self.batch_size):
            hi = min(lo + self.batch_size, stop)
            loaded = [records.load(i) for i in range(lo, hi)]
            batch = np.stack([array for array, *_ in loaded])
            if self._time_steps is not None:
                batch = np.asarray(crop(None, batch, self._time_steps, train=False))
            padding = np.repeat(batch[-1:], self.batch_size - len(batch), 0)
            # Every process holds the whole batch and places its own shards; the features
            # are gathered back to every process.
            padded = from_host(np.concatenate([batch, padding]), self._sharding)
            features = to_host(self._compiled(self._params, padded))[: hi - lo]
            yield features.astype(np.float32), [label for _, label, *_ in loaded]

    def __call__(
        self,
        records: Records,
        start: int,
        stop: int,
        *,
        on_batch: Callable[[int], Any] | None = None,
    ) -> np.ndarray:
        """``(stop - start, D)`` float32 features of ``records[start:stop]``; ``on_batch`` is
        called with the number of records of each finished batch (a progress bar)."""
        rows = []
        for features, _ in self.batches(records, start, stop):
            rows.append(features)
            if on_batch is not None:
                on_batch(len(features))
        if not rows:
            return np.zeros((0, self.encoder.feature_dim), np.float32)
        return np.concatenate(rows)


def embed(
    encoder: Any,
    records: Records,
    out: str | Path,
    *,
    batch_size: int | None = None,
    chunk_size: int = 1024,
    max_chunks: int | None = None,
    progress: bool = True,
) -> bool:
    """Embed every record into ``out`` (see the module docstring); resumable.

    ``batch_size``: global batch, a multiple of the device count (default 8 per device).
    ``max_chunks``: stop after computing this many new chunks (an interruption on
    purpose). Returns whether the output is complete.
    """
    import jax
    import tqdm

    from jaxecg.devices import sync_processes

    if encoder.kind != records.modality:
        raise UsageError(
            f"a {encoder.kind.upper()} encoder cannot embed {records.modality.upper()} records"
        )
    features = BatchedFeatures(encoder, batch_size=batch_size)
    batch_size = features.batch_size
    if chunk_size <= 0:
        raise UsageError(f"--chunk-size must be positive, got {chunk_size}")
    out = Path(out)
    sig = signature(encoder, records, batch_size=batch_size, chunk_size=chunk_size)
    if (out / SIGNATURE).is_file():
        if json.loads((out / SIGNATURE).read_text()) != sig:
            raise UsageError(
                f"--out {out} holds embeddings of another run (encoder, data or chunking differ); "
                "choose a new directory"
            )
        if (out / EMBEDDINGS).is_file():
            return True
    elif out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists, is not empty and holds no {SIGNATURE}")
    num_chunks = -(-len(records) // chunk_size)
    todo = [c for c in range(num_chunks) if not _chunk_path(out, c).is_file()]
    # Several processes: each computes its shards of every batch, process 0 alone writes.
    # All have read the directory above before it writes anything, so all run the same chunks.
    writer = jax.process_index() == 0
    sync_processes("jaxecg.embed: read the output directory")
    if writer:
        (out / CHUNKS).mkdir(parents=True, exist_ok=True)
        write_atomic(
            out / SIGNATURE, lambda f: f.write((json.dumps(sig, indent=2) + "\n").encode())
        )
    remaining = sum(min(chunk_size, len(records) - c * chunk_size) for c in todo)
    bar = tqdm.tqdm(
        total=len(records),
        initial=len(records) - remaining,
        unit="record",
        desc="embed",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with stop_requests() as stop_request:
        try:
            for computed, chunk in enumerate(todo):
                if max_chunks is not None and computed >= max_chunks:
                    sync_processes("jaxecg.embed: chunks written")
                    return False
                start, stop = chunk * chunk_size, min((chunk + 1) * chunk_size, len(records))
                chunk_rows = features(records, start, stop, on_batch=bar.update)
                if writer:
                    write_atomic(_chunk_path(out, chunk), functools.partial(_save_npy, chunk_rows))
                if stop_request.requested and chunk != todo[-1]:
                    raise Interrupted(
                        f"stopped by {stop_request.name} with {num_chunks - len(todo) + computed + 1}"
                        f" of {num_chunks} chunks in {out}; run the same command again to finish",
                        stop_request.signum,
                    )
        finally:
            bar.close()
    if writer:
        _assemble(out, records, num_chunks)
    sync_processes("jaxecg.embed: files written")
    return True


def _assemble(out: Path, records: Records, num_chunks: int) -> None:
    """Chunks → ``embeddings.npy`` and ``index.csv`` (each atomic), then drop the chunks."""
    embeddings = np.concatenate([np.load(_chunk_path(out, c)) for c in range(num_chunks)])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["row", "split", "record_id", "label"])
    for i in range(len(records)):
        _, label, split, record_id = records.load(i)
        writer.writerow([i, split, record_id, _label_text(label)])
    write_atomic(out / INDEX, lambda f: f.write(text.getvalue().encode()))
    write_atomic(out / EMBEDDINGS, functools.partial(_save_npy, embeddings))
    shutil.rmtree(out / CHUNKS)


# ---------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxecg embed",
        description="Write the encoder features of every record of a dataset (resumable).",
    )
    add_encoder_arguments(parser, "SOURCE")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    parser.add_argument("--num-records", type=int, default=256, help="size of a built-in dataset")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of a built-in dataset")
    parser.add_argument("--split", action="append", help="dataset split(s) to embed (default: all)")
    parser.add_argument("--batch-size", type=int, help="global batch (default: 8 per device)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="records per resumable chunk")
    parser.add_argument(
        "--max-chunks",
        type=int,
        help="stop after this many new chunks (resume later with the same arguments)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def add_encoder_arguments(parser: argparse.ArgumentParser, metavar: str) -> None:
    """The encoder source and DATA positionals and the options :func:`encoder_from_args` reads
    (shared by ``jaxecg embed`` and ``jaxecg probe``)."""
    parser.add_argument(
        "source",
        metavar=metavar,
        help="PyTorch checkpoint, Orbax directory (convert.save or a training "
        "run), or a preset name for random weights",
    )
    parser.add_argument(
        "data",
        metavar="DATA",
        help=f"built-in dataset {' or '.join(BUILTIN)}, or a 'jaxecg preprocess' directory",
    )
    parser.add_argument(
        "--kind",
        help="ecg, cmr or a model kind (mae, ecg_classifier, simclr, ...); "
        "needed for checkpoint files and presets",
    )
    parser.add_argument("--preset", help="model config preset for a checkpoint file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="model config override for a checkpoint file or preset (repeatable)",
    )
    parser.add_argument(
        "--image-size", type=int, help="CMR input size (default: the run's, else 210)"
    )
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for a preset")


def encoder_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~jaxecg.encoders.Encoder` that :func:`add_encoder_arguments`' options name."""
    from jaxecg.encoders import load_encoder

    return load_encoder(
        args.source,
        kind=args.kind,
        preset=args.preset,
        image_size=args.image_size,
        seed=args.seed,
        **_overrides(args.overrides),
    )


def _overrides(items: list[str]) -> dict[str, Any]:
    from jaxecg.config import parse_value

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = parse_value(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``jaxecg embed``; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("embed", lambda: _embed(args))


def _embed(args: argparse.Namespace) -> int:
    records = open_data(
        args.data, num_records=args.num_records, seed=args.data_seed, splits=args.split
    )
    complete = embed(
        encoder_from_args(args),
        records,
        args.out,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        max_chunks=args.max_chunks,
        progress=not args.no_progress,
    )
    if not complete:
        print(
            f"jaxecg embed: stopped after {args.max_chunks} new chunk(s) (--max-chunks); "
            "run again with the same arguments to finish",
            file=sys.stderr,
        )
    return 0
