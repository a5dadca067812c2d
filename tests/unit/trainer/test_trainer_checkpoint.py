"""Checkpoints (DCP directories): atomic, last K kept, a damaged newest one falls back to the
previous, and what one process wrote loads unsharded."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from coxswain_trainer.checkpoint import (
    COMPLETE,
    CheckpointStore,
    CorruptCheckpointError,
    capture_rng,
    restore_rng,
)

pytestmark = pytest.mark.unit


def _save(store: CheckpointStore, step: int) -> Path:
    store.begin(step)
    store.write_shards({"model": {"w": torch.full((3,), float(step))}}, step, alone=True)
    return store.commit(step, {"step": step, "rng": [capture_rng()]}, store.shard_digests(step, 0))


def test_round_trip_and_last_k_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for step in (10, 20, 30):
        _save(store, step)
    assert store.steps() == [30, 20]
    assert store.newest_valid() == 30
    target = {"model": {"w": torch.zeros(3)}}
    store.read_shards(target, 30, alone=True)
    assert torch.equal(target["model"]["w"], torch.full((3,), 30.0))
    assert torch.equal(store.load_full(30)["model"]["w"], torch.full((3,), 30.0))
    assert store.load_trainer_state(30)["step"] == 30
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove-shard", "no-complete"])
def test_damaged_newest_falls_back_to_the_previous(tmp_path: Path, damage: str) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    _save(store, 1)
    newest = _save(store, 2)
    shard = newest / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "remove-shard":
        shard.unlink()
    else:
        (newest / COMPLETE).unlink()  # the writer died before its last rename
    with pytest.raises(CorruptCheckpointError):
        store.verify(2)
    assert store.newest_valid() == 1


def test_leftover_incomplete_directory_is_not_a_checkpoint_and_is_pruned(tmp_path: Path) -> None:
    (tmp_path / "ckpt-0000000009").mkdir()
    (tmp_path / "ckpt-0000000009" / "__0_0.distcp").write_bytes(b"half written")
    store = CheckpointStore(tmp_path, keep=3)
    assert store.newest_valid() is None
    _save(store, 5)
    assert store.steps() == [5]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    store = CheckpointStore(tmp_path, keep=1)
    _save(store, 1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng(store.load_trainer_state(1)["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
