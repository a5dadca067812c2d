"""The trainer as a process: exit codes, SIGTERM, /progress and /metrics, export, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from trainer_harness import REPO, SMALL_SPEC, launch, merge

from coxswain.artifacts.repository import read_verified_files
from coxswain_trainer.checkpoint import CheckpointStore

KEY_HEX = "ab" * 32


def test_bad_config_exits_2_naming_the_field_before_any_work(tmp_path: Path) -> None:
    spec = merge(SMALL_SPEC, {"optimization": {"optimizer": {"name": "rmsprop"}}})
    gang = launch(spec, tmp_path)
    assert gang.wait() == [2]
    problems = [e["problem"] for e in gang.find("config_invalid")]
    assert "spec.optimization.optimizer.name: Input should be 'sgd', 'adam' or 'adamw'" in problems
    assert not gang.find("started")
    assert not (tmp_path / "checkpoints").exists()


def test_sigterm_writes_a_checkpoint_and_exits_143_then_the_rerun_resumes(tmp_path: Path) -> None:
    spec = merge(
        SMALL_SPEC, {"optimization": {"batchSize": 8, "epochs": 8}, "checkpoint": {"intervalSteps": 100000}}
    )
    gang = launch(spec, tmp_path)
    gang.wait_for(lambda: bool(gang.find("training_started")), what="training to start")
    gang.procs[0].send_signal(signal.SIGTERM)
    assert gang.wait(30) == [143], gang.dump()
    saved = gang.find("checkpoint_saved")
    assert [e["reason"] for e in saved] == ["signal"]
    step = saved[0]["step"]
    assert CheckpointStore(tmp_path / "checkpoints", 3).steps() == [step]
    assert gang.find("stopped_by_signal")[0]["exit_code"] == 143

    rerun = launch(spec, tmp_path, name="rerun")
    assert rerun.wait() == [0], rerun.dump()
    assert rerun.find("resuming")[0]["step"] == step
    assert rerun.find("training_finished")[0]["step"] == 8 * 180


def _get(port: int, path: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.headers["Content-Type"], response.read()


def test_progress_and_metrics_answer_during_a_run_and_the_export_is_verified(tmp_path: Path) -> None:
    document: dict[str, Any] = {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "digits-mlp", "namespace": "ml"},
        "spec": merge(
            SMALL_SPEC,
            {
                "optimization": {"batchSize": 8, "epochs": 15},
                "export": {
                    "repository": {"persistentVolumeClaim": {"claimName": "models"}},
                    "encryption": {"keySecretRef": {"name": "model-key", "key": "key"}},
                },
            },
        ),
    }
    gang = launch(document, tmp_path, env={"COXSWAIN_ENCRYPTION_KEY": KEY_HEX, "COXSWAIN_ATTEMPT": "1"})
    gang.wait_for(lambda: bool(gang.find("metrics_listening")), what="the metrics server")
    port = int(gang.find("metrics_listening")[0]["port"])

    progress: dict[str, Any] = {}

    def training_reported() -> bool:
        nonlocal progress
        progress = json.loads(_get(port, "/progress")[1])
        return progress["state"] == "training" and progress["step"] > 0 and progress["trainLoss"] is not None

    gang.wait_for(training_reported, what="/progress to show training")
    assert progress["totalSteps"] == 15 * 180
    assert 0 < progress["percent"] < 100
    assert progress["samplesPerSecond"] > 0
    assert progress["etaSeconds"] is not None
    assert set(progress) >= {"epoch", "evalMetric", "evalMetricName", "lastUpdateTime"}
    assert (progress["strategy"], progress["precision"], progress["worldSize"]) == ("ddp", "fp32", 1)
    ctype, body = _get(port, "/metrics")
    assert ctype.startswith("text/plain")
    text = body.decode()
    for name in (
        "coxswain_trainer_step ",
        "coxswain_trainer_loss ",
        "coxswain_trainer_samples_per_second ",
        "coxswain_trainer_step_duration_seconds_bucket",
        "coxswain_trainer_learning_rate 0.001",
        "coxswain_trainer_epoch ",
        "coxswain_trainer_checkpoints_total ",
        'coxswain_trainer_parallelism{precision="fp32",strategy="ddp"} 1.0',
    ):
        assert name in text, name

    assert gang.wait() == [0], gang.dump()
    termination = json.loads((tmp_path / "termination-log-0").read_text())
    assert termination["exportedModel"] == {
        "uri": "pvc://models/digits-mlp",
        "modelName": "digits-mlp",
        "version": "v1",
    }
    manifest, _files = read_verified_files(
        tmp_path / "models" / "digits-mlp" / "v1", key=bytes.fromhex(KEY_HEX)
    )
    assert manifest.source.name == "digits-mlp"
    assert manifest.source.attempt == 1
    assert manifest.metrics["accuracy"] > 0.9
    assert manifest.encryption is not None


def test_torchrun_runs_two_ranks(tmp_path: Path) -> None:
    spec = merge(SMALL_SPEC, {"optimization": {"epochs": 1, "batchSize": 64}})
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "COXSWAIN_METRICS_PORT": "0",
        "COXSWAIN_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "coxswain_trainer",
            "--config",
            str(config),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "event=training_finished" in done.stderr
    assert "rank=1 event=started" in done.stderr
    # 1438 training samples, 719 per rank, 32 per rank per step: 23 steps.
    assert CheckpointStore(tmp_path / "checkpoints", 3).steps()[0] == 23
