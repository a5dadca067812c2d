"""What `coxswain get` and `coxswain watch` print for a TrainingJob."""

from __future__ import annotations

import pytest

from coxswain.cli.inspect import ms_row, progress_line, tj_row

pytestmark = pytest.mark.unit

RUNNING = {
    "metadata": {"name": "cnn", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "status": {
        "phase": "Running",
        "restarts": 1,
        "progress": {
            "step": 50,
            "totalSteps": 200,
            "percent": 25.0,
            "epoch": 2,
            "trainLoss": 0.3141,
            "evalMetric": 0.91,
            "evalMetricName": "accuracy",
            "samplesPerSecond": 1234.5,
            "etaSeconds": 125,
        },
    },
}


def test_progress_line_has_step_loss_throughput_and_eta() -> None:
    fraction, line = progress_line(RUNNING)
    assert fraction == pytest.approx(0.25)
    assert (
        line
        == "Running | step 50/200 | epoch 2 | loss 0.3141 | accuracy 0.91 | 1234 samples/s | ETA 2m05s | restarts 1"
    )


def test_progress_line_before_any_progress() -> None:
    fraction, line = progress_line({"metadata": {"name": "x"}, "status": {"phase": "Pending"}})
    assert fraction is None
    assert line == "Pending"


def test_get_rows() -> None:
    assert tj_row(RUNNING)[:7] == ["cnn", "Running", "25%", "0.3141", "accuracy=0.91", "1", "2m05s"]
    ms = {
        "metadata": {"name": "digits"},
        "spec": {"versions": {"stable": "v1", "canary": "v2", "canaryPercent": 10}},
        "status": {"url": "http://digits.ml.svc.cluster.local", "readyReplicas": 2, "replicas": 3},
    }
    assert ms_row(ms)[:5] == ["digits", "http://digits.ml.svc.cluster.local", "2/3", "v1", "v2 (10%)"]
