"""Readable logs with the rank in every line; the progress record and metric names."""

from __future__ import annotations

import io
import json

import pytest

from coxswain_trainer.distributed import threads_per_process
from coxswain_trainer.logs import EventLog
from coxswain_trainer.metrics import TrainerMetrics

pytestmark = pytest.mark.unit


def test_key_value_lines_quote_only_what_needs_it() -> None:
    out = io.StringIO()
    log = EventLog(out, json_format=False)
    log.rank = 1
    log.info("checkpoint_saved", step=10, path="/tmp/a b", seconds=0.123456789, skipped=None)
    line = out.getvalue().strip()
    assert " level=info rank=1 event=checkpoint_saved step=10 " in line
    assert 'path="/tmp/a b"' in line
    assert "seconds=0.123457" in line
    assert "skipped" not in line


def test_json_lines_when_asked() -> None:
    out = io.StringIO()
    log = EventLog(out, json_format=True)
    log.rank = 0
    log.error("peer_failed", action="restart")
    record = json.loads(out.getvalue())
    assert record["rank"] == 0
    assert record["event"] == "peer_failed"
    assert record["level"] == "error"
    assert record["time"].endswith("Z")


def test_progress_json_has_the_status_progress_keys() -> None:
    metrics = TrainerMetrics()
    metrics.update(step=25, totalSteps=100, epoch=1, trainLoss=0.5, state="training")
    progress = json.loads(metrics.progress_json())
    assert progress["percent"] == 25.0
    assert set(progress) == {
        "step",
        "totalSteps",
        "percent",
        "epoch",
        "trainLoss",
        "evalMetric",
        "evalMetricName",
        "samplesPerSecond",
        "etaSeconds",
        "state",
        "worldSize",
        "strategy",
        "precision",
        "lastUpdateTime",
        "lastCheckpoint",
        "resumedFromStep",
    }


def test_threads_follow_omp_num_threads_or_the_cpus_shared_by_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_process(2) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads_per_process(10_000) == 1


def test_a_diverged_loss_is_null_in_progress_json() -> None:
    metrics = TrainerMetrics()
    metrics.update(step=3, totalSteps=10, trainLoss=float("nan"), evalMetric=float("inf"))
    progress = json.loads(metrics.progress_json())
    assert progress["trainLoss"] is None
    assert progress["evalMetric"] is None
