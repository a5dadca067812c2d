"""A ddp checkpoint written by 2 processes resumes on 1 (what a TrainingJob resized while
suspended does): the rest of the epoch's permutation, the optimizer, the schedule and the step
count carry over, and the run ends where the uninterrupted 2-process run ends.

Tolerance: the same global batches are averaged over 2 ranks or 1 in fp32 (another order of
additions), so the final parameters agree to rtol 1e-4 / atol 1e-5 and the eval loss to 1e-4.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from trainer_harness import SMALL_SPEC, launch, merge

from coxswain_trainer.checkpoint import CheckpointStore

# 800 training samples, global batch 100: 8 steps an epoch on 1 or 2 processes. Step 12 is in
# the middle of epoch 2, so the resumed run must train exactly the rest of that permutation.
SPEC = merge(
    SMALL_SPEC,
    {
        "task": {"builtin": {"model": "mlp", "dataset": "synthetic-regression", "syntheticSamples": 1000}},
        "optimization": {
            "batchSize": 100,
            "epochs": 2,
            "optimizer": {"name": "adam", "learningRate": 0.01},
            "schedule": {"type": "cosine"},
        },
        "checkpoint": {"intervalSteps": 4, "keep": 10},
    },
)


def test_ddp_checkpoint_from_two_ranks_resumes_on_one_to_the_same_result(tmp_path: Path) -> None:
    reference = launch(SPEC, tmp_path / "two", world_size=2)
    assert reference.wait(900) == [0, 0], reference.dump()
    source = CheckpointStore(tmp_path / "two" / "checkpoints", keep=100)
    final_step = source.newest_valid()
    assert final_step == 16 and 12 in source.steps()
    want = reference.find("training_finished")[0]

    one_dir = tmp_path / "one" / "checkpoints"
    shutil.copytree(source.path_for(12), one_dir / source.path_for(12).name)
    one = launch(SPEC, tmp_path / "one", world_size=1)
    assert one.wait(900) == [0], one.dump()
    resuming = one.find("resuming")[0]
    assert (resuming["step"], resuming["written_by"], resuming["world_size"]) == (12, "2 x ddp", 1)
    assert resuming["epoch"] == 1 and resuming["epoch_samples"] == 400
    got = one.find("training_finished")[0]
    assert got["step"] == want["step"] == 16
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], abs=1e-4)
    a = source.load_full(16)["model"]
    b = CheckpointStore(one_dir, keep=100).load_full(16)["model"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
