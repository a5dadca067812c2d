"""Prometheus metrics, `coxswain_server_` prefix, base units.

The operator's autoscaler reads `inflight_requests` and `requests_total`; the canary
analysis reads error rate (`requests_total` by `code`) and p99 (`request_duration_seconds`)
per `version`. Hot-path cost is kept small: label children are resolved once per version,
and the gauges that mirror a length are read at scrape time (set_function) instead of
being written on every request.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics import Counter as CounterChild
from prometheus_client.metrics import Histogram as HistogramChild

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# `_created` series double every series for no use here (Prometheus ignores them)
disable_created_metrics()  # type: ignore[no-untyped-call]

UNKNOWN_VERSION = "unknown"  # unroutable calls: never a label value taken from the URL


class ServerMetrics:
    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # RSS and CPU: the memory bound is visible
        r = self.registry
        # `code` is the HTTP status, also for gRPC calls (INVALID_ARGUMENT counts as 400, see
        # grpc_service.py): error-rate analysis then reads one label whatever the protocol.
        self.requests = Counter(
            "coxswain_server_requests",
            "Inference requests by version, protocol (http, grpc) and HTTP status",
            ["model", "version", "protocol", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "coxswain_server_request_duration_seconds",
            "Inference request latency in the server, body read to response sent",
            ["model", "version", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "coxswain_server_batch_size",
            "Rows per model batch",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "coxswain_server_queue_depth", "Requests waiting for a batch", ["model", "version"], registry=r
        )
        self.inflight = Gauge(
            "coxswain_server_inflight_requests", "Inference requests being handled", ["model"], registry=r
        )
        self.load_seconds = Gauge(
            "coxswain_server_model_load_seconds",
            "Time to verify, load and warm up a version",
            ["model", "version"],
            registry=r,
        )
        self.inference_errors = Counter(
            "coxswain_server_inference_errors",
            "Batches whose forward pass raised",
            ["model", "version"],
            registry=r,
        )
        self.traffic_weight = Gauge(
            "coxswain_server_traffic_weight",
            "Traffic weight of each version for unversioned calls",
            ["model", "version"],
            registry=r,
        )
        self.ready = Gauge("coxswain_server_ready", "1 when the server reports ready", ["model"], registry=r)

    def version(self, version: str) -> VersionMetrics:
        return VersionMetrics(self, version)

    def watch_inflight(self, read: Callable[[], float]) -> None:
        self.inflight.labels(self.model).set_function(read)

    def watch_ready(self, read: Callable[[], float]) -> None:
        self.ready.labels(self.model).set_function(read)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class VersionMetrics:
    """The label children of one version, resolved once."""

    def __init__(self, metrics: ServerMetrics, version: str) -> None:
        self._metrics = metrics
        self.version = version
        model = metrics.model
        self.batch_size: HistogramChild = metrics.batch_size.labels(model, version)
        self.inference_errors: CounterChild = metrics.inference_errors.labels(model, version)
        self._duration: dict[str, HistogramChild] = {}
        self._requests: dict[tuple[int, str], CounterChild] = {}

    def observe(self, code: int, seconds: float, protocol: str = "http") -> None:
        child = self._requests.get((code, protocol))
        if child is None:
            child = self._requests[code, protocol] = self._metrics.requests.labels(
                self._metrics.model, self.version, protocol, str(code)
            )
        child.inc()
        if code < 400:
            # errors are counted but kept out of the latency histogram: a burst of fast 429s
            # would otherwise make p99 look better the more the server refuses
            duration = self._duration.get(protocol)
            if duration is None:
                duration = self._duration[protocol] = self._metrics.duration.labels(
                    self._metrics.model, self.version, protocol
                )
            duration.observe(seconds)

    def watch_queue(self, read: Callable[[], float]) -> None:
        self._metrics.queue_depth.labels(self._metrics.model, self.version).set_function(read)

    def set_load_seconds(self, seconds: float) -> None:
        self._metrics.load_seconds.labels(self._metrics.model, self.version).set(seconds)

    def set_weight(self, weight: float) -> None:
        self._metrics.traffic_weight.labels(self._metrics.model, self.version).set(weight)
