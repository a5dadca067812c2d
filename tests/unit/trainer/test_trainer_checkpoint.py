"""Checkpoints: atomic, last K kept, and a corrupt newest one falls back to the previous."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from coxswain_trainer.checkpoint import CheckpointStore, CorruptCheckpointError, capture_rng, restore_rng

pytestmark = pytest.mark.unit


def _state(step: int) -> dict[str, object]:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "rng": [capture_rng()]}


def test_round_trip_and_last_k_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for step in (10, 20, 30):
        store.save(_state(step), step)
    assert store.steps() == [30, 20]
    found = store.newest_valid()
    assert found is not None
    assert found[0] == 30
    assert torch.equal(found[1]["model"]["w"], torch.full((3,), 30.0))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_newest_falls_back_to_the_previous(tmp_path: Path, damage: str) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    store.save(_state(1), 1)
    newest = store.save(_state(2), 2)
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        newest.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    else:
        newest.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError):
        store.load(2)
    found = store.newest_valid()
    assert found is not None
    assert found[0] == 1


def test_leftover_temp_file_is_not_a_checkpoint_and_is_cleaned(tmp_path: Path) -> None:
    (tmp_path / ".ckpt-0000000009.pt.999999.tmp").write_bytes(b"half written")
    store = CheckpointStore(tmp_path, keep=3)
    assert store.newest_valid() is None
    store.save(_state(5), 5)
    assert not list(tmp_path.glob("*.tmp"))


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    store = CheckpointStore(tmp_path, keep=1)
    store.save({"step": 1, "rng": [capture_rng()]}, 1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng(store.load(1)["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
