"""Two real processes with gloo on 127.0.0.1: DDP equivalence, a killed rank, resume."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import torch
from trainer_harness import SMALL_SPEC, launch, merge

from coxswain_trainer.checkpoint import CheckpointStore


def _final_model(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    store = CheckpointStore(checkpoint_dir, keep=100)
    step = store.newest_valid()
    assert step is not None, f"no checkpoint in {checkpoint_dir}"
    return store.load_full(step)["model"]  # type: ignore[no-any-return]


def test_two_processes_match_one_process_on_the_concatenated_batch_also_with_accumulation(
    tmp_path: Path,
) -> None:
    # 800 training samples, global batch 100: each rank's 50 are half of the one process's 100.
    spec = merge(
        SMALL_SPEC,
        {
            "task": {
                "builtin": {"model": "mlp", "dataset": "synthetic-regression", "syntheticSamples": 1000}
            },
            "optimization": {
                "batchSize": 100,
                "epochs": 3,
                "optimizer": {"name": "sgd", "learningRate": 0.05},
            },
            "checkpoint": {"intervalSteps": 1000},
        },
    )
    # And with DDP's no_sync: 2 ranks x 2 accumulated micro-batches of 25 are the same 100 samples.
    accumulated = merge(spec, {"optimization": {"batchSize": 50, "gradientAccumulationSteps": 2}})
    one = launch(spec, tmp_path / "one", world_size=1)
    two = launch(spec, tmp_path / "two", world_size=2)
    two_acc = launch(accumulated, tmp_path / "two-acc", world_size=2)
    assert one.wait() == [0]
    assert two.wait() == [0, 0]
    assert two_acc.wait() == [0, 0]
    a = _final_model(tmp_path / "one" / "checkpoints")
    for other in ("two", "two-acc"):
        b = _final_model(tmp_path / other / "checkpoints")
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(
                a[name], b[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=f"{other} {name}": f"{n}: {m}"
            )
    assert two.find("training_finished")[0]["step"] == one.find("training_finished")[0]["step"] == 24
    assert two_acc.find("training_finished")[0]["step"] == 24


def _steps_in(path: Path) -> list[int]:
    return CheckpointStore(path, keep=100).steps()


def test_killed_rank_stops_the_gang_and_the_rerun_resumes_to_the_same_loss_past_a_corrupt_checkpoint(
    tmp_path: Path,
) -> None:
    spec: dict[str, Any] = merge(
        SMALL_SPEC,
        {
            "task": {"builtin": {"model": "mlp", "dataset": "digits", "hiddenSizes": [32], "dropout": 0.1}},
            "optimization": {"batchSize": 8, "epochs": 4},
            "checkpoint": {"intervalSteps": 25, "keep": 2},
        },
    )
    crashed_dir = tmp_path / "crashed"
    crashed = launch(spec, crashed_dir, world_size=2)
    crashed.wait_for(lambda: len(_steps_in(crashed_dir / "checkpoints")) >= 2, what="two checkpoints")
    crashed.procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    code = crashed.procs[0].wait(timeout=30)
    assert time.monotonic() - killed_at < 15, "the surviving rank took too long to notice its dead peer"
    assert code == 3, crashed.dump()
    assert crashed.find("peer_failed"), crashed.dump()
    # The newest checkpoint is damaged as well: the rerun must fall back to the one before.
    newest, previous = _steps_in(crashed_dir / "checkpoints")[:2]
    damaged = CheckpointStore(crashed_dir / "checkpoints", keep=2).path_for(newest) / "__0_0.distcp"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    interrupted_at = previous

    # The uninterrupted reference runs beside the rerun (not beside the crash, whose timing matters).
    reference = launch(spec, tmp_path / "reference", world_size=2)
    resumed = launch(spec, crashed_dir, world_size=2, name="rerun")
    assert resumed.wait() == [0, 0], resumed.dump()
    assert reference.wait() == [0, 0], reference.dump()
    resume_events = resumed.find("resuming")
    assert resume_events, resumed.dump()
    assert resume_events[0]["step"] == interrupted_at
    assert 0 < interrupted_at < resumed.find("training_finished")[0]["step"]

    want = reference.find("training_finished")[0]
    got = resumed.find("training_finished")[0]
    assert got["step"] == want["step"]
    assert abs(got["eval_loss"] - want["eval_loss"]) < 1e-4
    a, b = _final_model(tmp_path / "reference" / "checkpoints"), _final_model(crashed_dir / "checkpoints")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_hung_rank_makes_the_other_exit_3_after_the_collective_timeout(tmp_path: Path) -> None:
    spec = merge(SMALL_SPEC, {"optimization": {"batchSize": 8, "epochs": 50}})
    gang = launch(spec, tmp_path, world_size=2, env={"COXSWAIN_COLLECTIVE_TIMEOUT_SECONDS": "10"})
    try:
        gang.wait_for(lambda: bool(gang.find("training_started")), what="training to start")
        gang.procs[1].send_signal(signal.SIGSTOP)  # alive but stuck: no closed socket to notice
        stopped_at = time.monotonic()
        code = gang.procs[0].wait(timeout=60)
        assert code == 3, gang.dump()
        assert time.monotonic() - stopped_at < 40
        assert gang.find("peer_failed"), gang.dump()
    finally:
        gang.kill()
