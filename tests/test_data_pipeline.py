"""The grain loader: global shuffle, equal disjoint shards, exact resume, named bad records."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxecg.data import ArraySource, SyntheticECGSource, make_loader


def index_source(n: int) -> ArraySource:
    """Records whose payload is their own index, so batches reveal the order."""
    return ArraySource(
        {
            "x": np.arange(n, dtype=np.float32)[:, None].repeat(3, 1),
            "label": np.arange(n, dtype=np.int32),
        },
        names=[f"rec-{i}" for i in range(n)],
    )


def epochs_of(loader, num_epochs):
    labels = [batch["label"] for batch in loader]
    per_epoch = loader.steps_per_epoch
    assert len(labels) == per_epoch * num_epochs
    return [np.concatenate(labels[e * per_epoch : (e + 1) * per_epoch]) for e in range(num_epochs)]


@pytest.mark.parametrize("num_records,shard_count", [(23, 2), (30, 3)])
def test_shards_are_disjoint_equal_and_cover_the_epoch(num_records, shard_count):
    shards = [
        epochs_of(
            make_loader(
                index_source(num_records),
                batch_size=2,
                seed=7,
                num_epochs=2,
                shard_index=k,
                shard_count=shard_count,
                drop_remainder=False,
            ),
            2,
        )
        for k in range(shard_count)
    ]
    kept = (num_records // shard_count) * shard_count
    for epoch in range(2):
        parts = [shard[epoch] for shard in shards]
        assert len({len(p) for p in parts}) == 1  # equal work per process
        union = np.concatenate(parts)
        assert len(union) == kept and len(set(union.tolist())) == kept  # disjoint, complete
        assert set(union.tolist()) <= set(range(num_records))
    # The global order is shuffled and reshuffled per epoch.
    assert not np.array_equal(shards[0][0], shards[0][1])
    assert not np.array_equal(shards[0][0], np.sort(shards[0][0]))


def test_shuffle_is_a_function_of_the_seed():
    first = epochs_of(
        make_loader(index_source(40), batch_size=4, seed=1, shard_count=1, shard_index=0), 1
    )
    again = epochs_of(
        make_loader(index_source(40), batch_size=4, seed=1, shard_count=1, shard_index=0), 1
    )
    other = epochs_of(
        make_loader(index_source(40), batch_size=4, seed=2, shard_count=1, shard_index=0), 1
    )
    ordered = epochs_of(
        make_loader(index_source(40), batch_size=4, shuffle=False, shard_count=1, shard_index=0), 1
    )
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])
    np.testing.assert_array_equal(ordered[0], np.arange(40))


def test_restored_loader_yields_the_same_next_batches(tmp_path):
    def loader():
        return make_loader(
            index_source(21), batch_size=4, seed=3, num_epochs=None, shard_index=0, shard_count=1
        )

    reference = loader()
    for _ in range(4):
        next(reference)
    state = reference.get_state()
    expected = [next(reference)["label"] for _ in range(7)]  # crosses epoch boundaries (5/epoch)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(4, args=ocp.args.Composite(data=ocp.args.JsonSave(state)))
        manager.wait_until_finished()
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        restored_state = manager.restore(4, args=ocp.args.Composite(data=ocp.args.JsonRestore()))[
            "data"
        ]
    resumed = loader()
    resumed.set_state(restored_state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["label"], want)
    other = make_loader(
        index_source(21), batch_size=4, seed=4, num_epochs=None, shard_index=0, shard_count=1
    )
    with pytest.raises(ValueError, match=r"different configuration.*'seed': \(3, 4\)"):
        other.set_state(state)


def test_device_prefetch_keeps_the_resume_position_exact():
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharding = NamedSharding(mesh, P("data"))

    def loader():
        return make_loader(
            index_source(40),
            batch_size=8,
            seed=0,
            num_epochs=None,
            shard_index=0,
            shard_count=1,
            sharding=sharding,
            device_prefetch=3,
        )

    first = loader()
    batch = next(first)
    assert isinstance(batch["x"], jax.Array) and batch["x"].sharding == sharding
    assert batch["x"].shape == (8, 3)
    next(first)
    state = first.get_state()  # three batches are already on device ahead of this point
    expected = [np.asarray(next(first)["label"]) for _ in range(4)]
    resumed = loader()
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(np.asarray(next(resumed)["label"]), want)


class FlakySource:
    """Ten ECG records named ``rec-<i>``; record ``bad`` is broken in the way ``fault`` says."""

    def __init__(self, bad: int, fault: str):
        self.bad, self.fault = bad, fault

    def __len__(self):
        return 10

    def __getitem__(self, index):
        if index == self.bad and self.fault == "unreadable":
            raise OSError("checksum mismatch")
        shape = (12, 40) if index == self.bad and self.fault == "shape" else (12, 50)
        return {"ecg": np.zeros(shape, np.float32), "label": np.int32(0)}

    def record_name(self, index):
        return f"rec-{index}"


@pytest.mark.parametrize(
    "fault,message",
    [
        ("shape", r"rec-6: expected record layout .*\(12, 50\).*got .*\(12, 40\)"),
        ("unreadable", r"rec-6: cannot be loaded \(OSError: checksum mismatch\)"),
    ],
)
def test_bad_record_is_named(fault, message):
    loader = make_loader(FlakySource(6, fault), batch_size=2, seed=5, shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match=message):
        list(loader)


def test_argument_errors_and_synthetic_source():
    with pytest.raises(ValueError, match=r"shard_index must be in \[0, 2\), got 2"):
        make_loader(index_source(10), batch_size=2, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="give 5 per process, fewer than one batch of 8"):
        make_loader(index_source(10), batch_size=8, shard_index=0, shard_count=2)
    loader = make_loader(
        SyntheticECGSource(8, seed=1, length=600), batch_size=4, shard_index=0, shard_count=1
    )
    batch = next(loader)
    assert batch["ecg"].shape == (4, 12, 600) and batch["ecg"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert loader.steps_per_epoch == 2 and loader.batch_size == 4
