"""``jaxecg embed``: one row per record in order, index file, resumable by chunk.

Runs go through :func:`jaxecg.embed.main` in-process, over the 4 forced host devices,
with a tiny random-init ViT (a preset plus ``--set`` overrides) and ResNet18.
"""

from __future__ import annotations

import csv
import os
import signal

import golden
import jax
import numpy as np
import pytest

import jaxecg.embed
from jaxecg.data import DatasetWriter, synthetic_cmr_record, synthetic_ecg_record
from jaxecg.embed import CHUNKS, EMBEDDINGS, INDEX, SIGNATURE, main
from jaxecg.encoders import load_encoder

TINY_ECG = {"img_size": [1, 12, 500], "embed_dim": 32, "depth": 1, "num_heads": 2}
ECG_ARGS = [
    "pluto",
    "synthetic-ecg",
    "--kind",
    "ecg",
    "--seed",
    "5",
    *[f"--set={k}={v}" for k, v in TINY_ECG.items()],
]
RUN = ["--num-records", "10", "--chunk-size", "4", "--batch-size", "4", "--no-progress"]
OUTPUTS = (EMBEDDINGS, INDEX, SIGNATURE)


def _index(out) -> list[dict[str, str]]:
    with open(out / INDEX, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> tuple:
    """One uninterrupted run: its directory and its files' bytes."""
    out = tmp_path_factory.mktemp("embed") / "full"
    assert main([*ECG_ARGS, *RUN, "--out", str(out)]) == 0
    assert not (out / CHUNKS).exists()
    return out, {name: (out / name).read_bytes() for name in OUTPUTS}


def test_one_row_per_record_in_order(complete) -> None:
    out, _ = complete
    rows = np.load(out / EMBEDDINGS)
    assert rows.shape == (10, 32) and rows.dtype == np.float32
    enc = load_encoder("pluto", kind="ecg", seed=5, **TINY_ECG)
    x = np.stack([synthetic_ecg_record(i)[0][:, :500] for i in range(10)])
    # Other batch composition than the run's padded, sharded batches: rounding only.
    np.testing.assert_allclose(rows, jax.jit(enc.apply)(enc.params, x), rtol=0, atol=1e-5)
    index = _index(out)
    assert [r["row"] for r in index] == [str(i) for i in range(10)]
    assert [r["record_id"] for r in index] == [f"synthetic-ecg-{i:06d}" for i in range(10)]
    assert [r["label"] for r in index] == [str(synthetic_ecg_record(i)[1]) for i in range(10)]


def test_resumed_run_writes_identical_files(complete, tmp_path) -> None:
    _, expected = complete
    out = tmp_path / "resumed"
    assert main([*ECG_ARGS, *RUN, "--out", str(out), "--max-chunks", "2"]) == 0
    chunks = sorted((out / CHUNKS).iterdir())
    assert len(chunks) == 2 and not (out / EMBEDDINGS).exists()
    chunks[-1].unlink()  # a chunk lost to the interruption is recomputed
    assert main([*ECG_ARGS, *RUN, "--out", str(out)]) == 0
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == expected
    # A finished run started again changes nothing.
    assert main([*ECG_ARGS, *RUN, "--out", str(out)]) == 0
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == expected


def test_resume_with_other_settings_is_refused(complete, capsys) -> None:
    out, _ = complete
    status = main([*ECG_ARGS, *RUN, "--seed", "6", "--out", str(out)])
    assert status == 2
    assert "holds embeddings of another run" in capsys.readouterr().err


def test_cmr_dataset_is_resized_and_embedded(tmp_path) -> None:
    out = tmp_path / "cmr"
    # Golden ResNet18 weights: converting them is much cheaper here than a random init.
    source = str(golden.checkpoint_path("dev/checkpoints/cmr_image_encoder_resnet18"))
    args = [
        source,
        "synthetic-cmr",
        "--kind",
        "cmr",
        "--preset",
        "resnet18",
        "--image-size",
        "32",
        "--num-records",
        "5",
        "--batch-size",
        "4",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    rows = np.load(out / EMBEDDINGS)
    enc = load_encoder(source, kind="cmr", preset="resnet18", image_size=32)
    images = np.stack([synthetic_cmr_record(i)[0] for i in range(5)])
    expected = jax.jit(lambda p, x: enc.apply(p, enc.preprocess(x)))(enc.params, images)
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-5)
    assert [r["label"] for r in _index(out)] == [str(synthetic_cmr_record(i)[1]) for i in range(5)]


def test_preprocessed_dataset_directory(tmp_path) -> None:
    data = tmp_path / "data"
    writer = DatasetWriter(data, {"train": 3, "test": 2}, leads=12, length=5000)
    for split, indices in (("test", (0, 1)), ("train", (2, 3, 4))):
        for i in indices:
            ecg, label = synthetic_ecg_record(i)
            writer.append(split, f"patient/{i}", ecg, label)
    writer.finish({})
    out = tmp_path / "out"
    assert (
        main(
            [
                *ECG_ARGS[:1],
                str(data),
                *ECG_ARGS[2:],
                "--batch-size",
                "4",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    index = _index(out)
    assert [(r["split"], r["record_id"]) for r in index] == [
        ("train", "patient/2"),
        ("train", "patient/3"),
        ("train", "patient/4"),
        ("test", "patient/0"),
        ("test", "patient/1"),
    ]
    assert np.load(out / EMBEDDINGS).shape == (5, 32)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pluto", "no-such-data", "--kind", "ecg"], "neither a built-in dataset"),
        (
            [*ECG_ARGS[:1], "synthetic-cmr", *ECG_ARGS[2:], "--num-records", "2"],
            "ECG encoder cannot embed CMR",
        ),
        ([*ECG_ARGS, "--batch-size", "6"], "multiple of the 4 devices"),
        (["pluto", "synthetic-ecg", "--kind", "ecg", "--set", "depth"], "--set expects KEY=VALUE"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, tmp_path, capsys) -> None:
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_dispatches_embed_help(capsys) -> None:
    from jaxecg.cli import main as jaxecg_main

    with pytest.raises(SystemExit) as exit_info:
        jaxecg_main(["embed", "--help"])
    assert exit_info.value.code == 0
    assert "usage: jaxecg embed" in capsys.readouterr().out


def test_sigterm_writes_the_chunk_in_flight_and_the_rerun_completes(
    complete, tmp_path, monkeypatch, capsys
) -> None:
    _, expected = complete
    write = jaxecg.embed.write_atomic

    def write_then_sigterm(path, contents):  # the cluster's SIGTERM during the first chunk
        if path.parent.name == CHUNKS:
            os.kill(os.getpid(), signal.SIGTERM)
        write(path, contents)

    monkeypatch.setattr(jaxecg.embed, "write_atomic", write_then_sigterm)
    out = tmp_path / "out"
    assert main([*ECG_ARGS, *RUN, "--out", str(out)]) == 143
    assert f"stopped by SIGTERM with 1 of 3 chunks in {out}" in capsys.readouterr().err
    assert len(list((out / CHUNKS).iterdir())) == 1 and not (out / EMBEDDINGS).exists()
    monkeypatch.undo()
    assert main([*ECG_ARGS, *RUN, "--out", str(out)]) == 0
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == expected
