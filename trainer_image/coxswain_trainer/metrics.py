"""Rank 0's Prometheus metrics and JSON `/progress`, served from a background thread.

The operator polls `/progress` to fill `status.progress`; Prometheus scrapes `/metrics`.
Both read values the training loop updates at its logging interval, so serving them costs
the loop nothing but the lock-free assignments.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

STATES = ("starting", "training", "evaluating", "checkpointing", "exporting", "finished", "failed")
STEP_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass
class Progress:
    """The keys of `status.progress` plus `state`, named as the operator reads them in JSON."""

    step: int = 0
    totalSteps: int = 0
    percent: float = 0.0
    epoch: int = 0
    trainLoss: float | None = None
    evalMetric: float | None = None
    evalMetricName: str | None = None
    samplesPerSecond: float | None = None
    etaSeconds: float | None = None
    state: str = "starting"
    worldSize: int | None = None
    strategy: str | None = None  # ddp | fsdp
    precision: str | None = None  # fp32 | bf16 | fp16
    lastUpdateTime: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    # {step, path, time} of the newest checkpoint rank 0 wrote; the operator copies it to status.
    lastCheckpoint: dict[str, Any] | None = None
    # The step this attempt resumed from (None: it started afresh); the operator shows it in status.
    resumedFromStep: int | None = None


class TrainerMetrics:
    """Metric families in base units, and the progress record; one per process (rank 0 serves)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.step = Gauge("coxswain_trainer_step", "Optimizer steps completed.", registry=r)
        self.total_steps = Gauge("coxswain_trainer_total_steps", "Optimizer steps planned.", registry=r)
        self.epoch = Gauge("coxswain_trainer_epoch", "Current epoch (0-based).", registry=r)
        self.loss = Gauge(
            "coxswain_trainer_loss", "Mean training loss over the last logging interval.", registry=r
        )
        self.eval_metric = Gauge(
            "coxswain_trainer_eval_metric", "Latest evaluation metrics.", ["name"], registry=r
        )
        self.samples_per_second = Gauge(
            "coxswain_trainer_samples_per_second",
            "Training samples per second, all ranks together.",
            registry=r,
        )
        self.step_duration = Histogram(
            "coxswain_trainer_step_duration_seconds",
            "Wall time of one optimizer step on rank 0.",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.learning_rate = Gauge("coxswain_trainer_learning_rate", "Current learning rate.", registry=r)
        self.checkpoints = Counter("coxswain_trainer_checkpoints", "Checkpoints written.", registry=r)
        self.checkpoint_seconds = Histogram(
            "coxswain_trainer_checkpoint_duration_seconds", "Time to write one checkpoint.", registry=r
        )
        self.world_size = Gauge("coxswain_trainer_world_size", "Processes in the gang.", registry=r)
        self.parallelism = Gauge(
            "coxswain_trainer_parallelism",
            "1 for the strategy (ddp, fsdp) and precision (fp32, bf16, fp16) this run trains with.",
            ["strategy", "precision"],
            registry=r,
        )
        self.progress = Progress()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def update(self, **fields: Any) -> None:
        """Set progress fields (and the matching gauges); percent and time are derived here."""
        with self._lock:
            for key, value in fields.items():
                setattr(self.progress, key, value)
            p = self.progress
            p.percent = round(100.0 * p.step / p.totalSteps, 2) if p.totalSteps else 0.0
            p.lastUpdateTime = datetime.now(UTC).isoformat()
        self.step.set(p.step)
        self.total_steps.set(p.totalSteps)
        self.epoch.set(p.epoch)
        if p.trainLoss is not None:
            self.loss.set(p.trainLoss)
        if p.samplesPerSecond is not None:
            self.samples_per_second.set(p.samplesPerSecond)

    def set_state(self, state: str) -> None:
        self.update(state=state)

    def progress_json(self) -> bytes:
        with self._lock:
            record = asdict(self.progress)
        # A diverged loss is NaN or inf, which strict JSON parsers (Go's, the API server's) refuse.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        return json.dumps(clean).encode()

    def final_progress(self) -> dict[str, Any]:
        """The last progress for the termination log (4 KiB at most there: no checkpoint path)."""
        record: dict[str, Any] = json.loads(self.progress_json())
        keep = (
            "step",
            "totalSteps",
            "epoch",
            "trainLoss",
            "evalMetric",
            "evalMetricName",
            "samplesPerSecond",
            "worldSize",
            "resumedFromStep",
        )
        return {k: record[k] for k in keep if record.get(k) is not None} | {"state": "finished"}

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the HTTP server in a daemon thread; returns the bound port (0 = any free one)."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype = generate_latest(metrics.registry), CONTENT_TYPE_LATEST
                elif path == "/progress":
                    body, ctype = metrics.progress_json(), "application/json"
                elif path in ("/healthz", "/"):
                    body, ctype = b"ok\n", "text/plain"
                else:
                    self.send_error(404, "try /metrics or /progress")
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the training log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        thread.start()
        return int(self._server.server_address[1])

    def stop(self, linger_seconds: float = 0.0) -> None:
        """Stop serving; `linger_seconds` lets a last poll see the final state first."""
        if self._server is None:
            return
        if linger_seconds > 0:
            time.sleep(linger_seconds)
        self._server.shutdown()
        self._server.server_close()
        self._server = None
