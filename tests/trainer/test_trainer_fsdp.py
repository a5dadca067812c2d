"""Sharded training (strategy fsdp) on real gloo processes: the same results as ddp, sharded
checkpoints that resume on a different number of processes, a damaged shard that falls back
to the previous checkpoint, and a ddp resume where only rank 0 has the checkpoint volume.

Tolerances: fsdp's reduce-scatter and ddp's all-reduce add the same per-rank gradients in
fp32 (possibly in another order), so final parameters agree to rtol 1e-4 / atol 1e-5 and the
final eval loss to 1e-4; a resumed run agrees with the uninterrupted one to the same bounds.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_harness import SMALL_SPEC, Gang, launch, merge

from coxswain.artifacts.repository import read_verified_files
from coxswain_trainer.checkpoint import CheckpointStore
from coxswain_trainer.export import WEIGHTS_FILE

CASES: dict[str, dict[str, Any]] = {
    "linear": {
        "task": {"builtin": {"model": "linear", "dataset": "diabetes"}},
        "optimization": {"batchSize": 32},
    },
    "mlp": {
        # Accumulation and clipping: fsdp's deferred reduce-scatter and its sharded-gradient norm.
        "task": {"builtin": {"model": "mlp", "dataset": "digits", "hiddenSizes": [32, 16]}},
        "optimization": {"batchSize": 64, "gradientAccumulationSteps": 2, "gradientClipNorm": 0.5},
        "export": {"repository": {"persistentVolumeClaim": {"claimName": "models"}}, "modelName": "mlp"},
    },
    "cnn": {
        "task": {"builtin": {"model": "cnn", "dataset": "digits", "channels": [4, 8], "hiddenSizes": [16]}},
        "optimization": {"batchSize": 128, "maxSteps": 6},
    },
    "custom": {
        # examples/custom_task/sine.py, which chooses its fsdp blocks with shard_blocks().
        "task": {"custom": {"module": "custom_task.sine", "config": {"samples": 400, "hidden": 16}}},
        "optimization": {"batchSize": 40},
    },
}


def _final(gang: Gang, directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    store = CheckpointStore(directory, keep=100)
    step = store.newest_valid()
    assert step is not None, gang.dump()
    return gang.find("training_finished")[0], store.load_full(step)["model"]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp_on_two_ranks_matches_ddp(tmp_path: Path, case: str) -> None:
    spec = merge(
        SMALL_SPEC, merge({"optimization": {"epochs": 1}, "checkpoint": {"intervalSteps": 1000}}, CASES[case])
    )
    spec["task"] = CASES[case]["task"]  # not merged: a task is builtin or custom
    ddp = launch(spec, tmp_path / "ddp", world_size=2)
    fsdp = launch(merge(spec, {"optimization": {"strategy": "fsdp"}}), tmp_path / "fsdp", world_size=2)
    assert ddp.wait(900) == [0, 0], ddp.dump()
    assert fsdp.wait(900) == [0, 0], fsdp.dump()
    assert fsdp.find("training_started")[0]["strategy"] == "fsdp"
    want, want_model = _final(ddp, tmp_path / "ddp" / "checkpoints")
    got, got_model = _final(fsdp, tmp_path / "fsdp" / "checkpoints")
    assert got["step"] == want["step"] > 0
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], abs=1e-4)
    _assert_same(want_model, got_model)
    if "export" in spec:
        # Export gathers the shards into one ordinary model (same manifest, checksums verified).
        exported = [
            read_verified_files(tmp_path / run / "models" / "mlp" / "v1")[1][WEIGHTS_FILE]
            for run in ("ddp", "fsdp")
        ]
        a, b = (torch.load(io.BytesIO(data), weights_only=True) for data in exported)
        _assert_same(a, b)


RESIZE_SPEC = merge(
    SMALL_SPEC,
    {
        # 800 training samples, global batch 100: 8 steps an epoch on 1, 2 or 4 processes.
        "task": {"builtin": {"model": "mlp", "dataset": "synthetic-regression", "syntheticSamples": 1000}},
        "optimization": {
            "batchSize": 100,
            "epochs": 2,
            "optimizer": {"name": "adam", "learningRate": 0.01},
            "strategy": "fsdp",
        },
        "checkpoint": {"intervalSteps": 4, "keep": 10},
    },
)


def test_fsdp_checkpoint_from_two_ranks_resumes_on_one_and_on_four_and_skips_a_truncated_shard(
    tmp_path: Path,
) -> None:
    reference = launch(RESIZE_SPEC, tmp_path / "two", world_size=2)
    assert reference.wait(900) == [0, 0], reference.dump()
    source = CheckpointStore(tmp_path / "two" / "checkpoints", keep=100)
    assert {8, 12} <= set(source.steps())
    want, want_model = _final(reference, tmp_path / "two" / "checkpoints")

    one_dir, four_dir = tmp_path / "one" / "checkpoints", tmp_path / "four" / "checkpoints"
    shutil.copytree(source.path_for(12), one_dir / source.path_for(12).name)
    for step in (8, 12):
        shutil.copytree(source.path_for(step), four_dir / source.path_for(step).name)
    # Step 12's shard of rank 1 lost its tail: four processes must resume from step 8.
    shard = four_dir / source.path_for(12).name / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-100])

    one = launch(RESIZE_SPEC, tmp_path / "one", world_size=1)
    four = launch(RESIZE_SPEC, tmp_path / "four", world_size=4)
    assert one.wait(900) == [0], one.dump()
    assert four.wait(900) == [0, 0, 0, 0], four.dump()
    resumed_one, resumed_four = one.find("resuming")[0], four.find("resuming")[0]
    assert (resumed_one["step"], resumed_one["written_by"]) == (12, "2 x fsdp")
    assert resumed_four["step"] == 8
    assert [e["step"] for e in four.find("checkpoint_invalid")] == [12]
    for gang, directory in ((one, one_dir), (four, four_dir)):
        got, got_model = _final(gang, directory)
        assert got["step"] == want["step"] == 16
        assert got["eval_loss"] == pytest.approx(want["eval_loss"], abs=1e-4)
        _assert_same(want_model, got_model)


def test_ddp_resume_needs_the_checkpoint_directory_on_rank_0_only(tmp_path: Path) -> None:
    spec = merge(
        SMALL_SPEC,
        {
            # Dropout: rank 1's random generators must come back too (broadcast from rank 0).
            "task": {"builtin": {"model": "mlp", "dataset": "digits", "hiddenSizes": [32], "dropout": 0.1}},
            "optimization": {"batchSize": 32, "epochs": 1},
            "checkpoint": {"intervalSteps": 20, "keep": 5},
        },
    )
    reference = launch(spec, tmp_path / "reference", world_size=2)
    assert reference.wait(900) == [0, 0], reference.dump()
    want, want_model = _final(reference, tmp_path / "reference" / "checkpoints")
    source = CheckpointStore(tmp_path / "reference" / "checkpoints", keep=100).path_for(20)

    rank0_dir, rank1_dir = tmp_path / "resumed" / "rank0", tmp_path / "resumed" / "rank1"
    shutil.copytree(source, rank0_dir / source.name)
    resumed = launch(
        spec,
        tmp_path / "resumed",
        world_size=2,
        rank_env={r: {"COXSWAIN_CHECKPOINT_DIR": str(d)} for r, d in enumerate((rank0_dir, rank1_dir))},
    )
    assert resumed.wait(900) == [0, 0], resumed.dump()
    assert resumed.find("resuming")[0]["step"] == 20
    assert not any(rank1_dir.iterdir()) if rank1_dir.exists() else True
    got, got_model = _final(resumed, rank0_dir)
    assert got["step"] == want["step"]
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], abs=1e-4)
    _assert_same(want_model, got_model)
