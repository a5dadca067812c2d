"""fsdp after SIGTERM: the ranks agree to stop at one step and write its sharded checkpoint
together, so the next attempt resumes from the step the signal came at, not from the last
interval checkpoint."""

from __future__ import annotations

import signal
from pathlib import Path

from trainer_harness import SMALL_SPEC, launch, merge

from coxswain_trainer.checkpoint import CheckpointStore


def test_sigterm_to_one_fsdp_rank_stops_both_at_one_step_with_a_sharded_checkpoint(tmp_path: Path) -> None:
    spec = merge(
        SMALL_SPEC,
        {
            "optimization": {"batchSize": 8, "epochs": 8, "strategy": "fsdp"},
            "checkpoint": {"intervalSteps": 100000},
        },
    )
    gang = launch(spec, tmp_path, world_size=2)
    gang.wait_for(lambda: bool(gang.find("training_started")), what="training to start")
    # Only rank 1 is told: rank 0 learns it through the per-step agreement.
    gang.procs[1].send_signal(signal.SIGTERM)
    assert gang.wait(60) == [143, 143], gang.dump()
    (saved,) = gang.find("checkpoint_saved")
    assert saved["reason"] == "signal" and saved["world_size"] == 2
    assert not gang.find("checkpoint_skipped"), gang.dump()
    step = saved["step"]
    store = CheckpointStore(tmp_path / "checkpoints", 3)
    assert store.newest_valid() == step
    assert {e["step"] for r in (0, 1) for e in gang.find("stopped_by_signal", rank=r)} == {step}

    # The next attempt resumes from it, here on one process.
    rerun = launch(spec, tmp_path, name="rerun")
    assert rerun.wait() == [0], rerun.dump()
    resuming = rerun.find("resuming")[0]
    assert (resuming["step"], resuming["written_by"]) == (step, "2 x fsdp")
