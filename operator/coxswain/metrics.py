"""The operator's own Prometheus metrics (served by `coxswain operator run` on /metrics).

Names follow design.md: `coxswain_` prefix, base units. Per-job series carry only
`namespace` and `name`, and are removed when the job goes, so cardinality follows the
number of live objects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sized

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

TRAININGJOBS_CREATED = Counter(
    "coxswain_trainingjobs_created_total", "TrainingJobs the operator started handling.", registry=REGISTRY
)
TRAININGJOBS_SUCCEEDED = Counter(
    "coxswain_trainingjobs_succeeded_total", "TrainingJobs that finished successfully.", registry=REGISTRY
)
TRAININGJOBS_FAILED = Counter(
    "coxswain_trainingjobs_failed_total",
    "TrainingJobs that failed, by reason.",
    ["reason"],
    registry=REGISTRY,
)
TRAININGJOBS_RESTARTS = Counter(
    "coxswain_trainingjobs_restarts_total",
    "Whole-gang restarts, by failure cause and whether the restart budget was charged.",
    ["cause", "charged"],
    registry=REGISTRY,
)
TRAININGJOBS_BY_PHASE = Gauge("coxswain_trainingjobs", "TrainingJobs by phase.", ["phase"], registry=REGISTRY)
TRAININGJOB_PROGRESS = Gauge(
    "coxswain_trainingjob_progress_ratio",
    "Fraction of the planned steps done.",
    ["namespace", "name"],
    registry=REGISTRY,
)
TRAININGJOB_ETA = Gauge(
    "coxswain_trainingjob_eta_seconds", "Estimated time to finish.", ["namespace", "name"], registry=REGISTRY
)
TRAININGJOB_LOSS = Gauge(
    "coxswain_trainingjob_train_loss",
    "Latest training loss reported by rank 0.",
    ["namespace", "name"],
    registry=REGISTRY,
)
TRAININGJOB_RESTART_BUDGET = Gauge(
    "coxswain_trainingjob_restart_budget_used_ratio",
    "Charged restarts divided by spec.failurePolicy.maxRestarts (1 = spent).",
    ["namespace", "name"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "coxswain_reconcile_duration_seconds",
    "Time of one reconcile pass, by resource kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "coxswain_reconcile_errors_total",
    "Reconcile passes that raised, by resource kind.",
    ["kind"],
    registry=REGISTRY,
)
RECONCILE_QUEUE = Gauge(
    "coxswain_reconcile_pending",
    "Objects woken and waiting for a reconcile pass, by kind.",
    ["kind"],
    registry=REGISTRY,
)

_PER_JOB: tuple[Gauge, ...] = (
    TRAININGJOB_PROGRESS,
    TRAININGJOB_ETA,
    TRAININGJOB_LOSS,
    TRAININGJOB_RESTART_BUDGET,
)
_phase_of: dict[str, str] = {}


def set_job_phase(uid: str, phase: str | None) -> None:
    """Record a job's phase (None when it is gone) and refresh the by-phase gauge."""
    old = _phase_of.get(uid)
    if old == phase:
        return
    if old is not None:
        TRAININGJOBS_BY_PHASE.labels(old).dec()
        del _phase_of[uid]
    if phase is not None:
        _phase_of[uid] = phase
        TRAININGJOBS_BY_PHASE.labels(phase).inc()


def forget_job(namespace: str, name: str, uid: str) -> None:
    set_job_phase(uid, None)
    for gauge in _PER_JOB:
        with contextlib.suppress(KeyError):  # never set for this job
            gauge.remove(namespace, name)


# --- ModelService (serving) -----------------------------------------------------------
# Per-service series carry `namespace` and `name` and are removed when the service goes.
MODELSERVICE_REPLICAS = Gauge(
    "coxswain_modelservice_replicas",
    "Server pods that exist (not terminating).",
    ["namespace", "name"],
    registry=REGISTRY,
)
MODELSERVICE_READY_REPLICAS = Gauge(
    "coxswain_modelservice_ready_replicas",
    "Server pods ready to answer.",
    ["namespace", "name"],
    registry=REGISTRY,
)
MODELSERVICE_DESIRED_REPLICAS = Gauge(
    "coxswain_modelservice_desired_replicas",
    "Replicas wanted (spec.replicas, as the autoscaler, an HPA or a user set it).",
    ["namespace", "name"],
    registry=REGISTRY,
)
MODELSERVICE_READY = Gauge(
    "coxswain_modelservice_ready",
    "1 when the Ready condition is True (a request would succeed), else 0.",
    ["namespace", "name"],
    registry=REGISTRY,
)
MODELSERVICE_INFLIGHT = Gauge(
    "coxswain_modelservice_inflight_requests",
    "In-flight requests summed over the pods that answered the last scrape.",
    ["namespace", "name"],
    registry=REGISTRY,
)
MODELSERVICE_RPS = Gauge(
    "coxswain_modelservice_requests_per_second",
    "Request rate over the pods that answered the last two scrapes.",
    ["namespace", "name"],
    registry=REGISTRY,
)
MODELSERVICE_SCALE_DECISIONS = Counter(
    "coxswain_modelservice_scale_decisions_total",
    "Replica changes made by the builtin autoscaler, by direction (up, down).",
    ["namespace", "name", "direction"],
    registry=REGISTRY,
)
MODELSERVICE_SCALE_DECISION_SECONDS = Histogram(
    "coxswain_modelservice_scrape_to_decision_seconds",
    "Time from the start of a metrics scrape to the replica change written for it.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
MODELSERVICE_CANARY_TRAFFIC = Gauge(
    "coxswain_modelservice_canary_traffic_percent",
    "Share of unversioned requests sent to the canary version (0 when none or rolled back).",
    ["namespace", "name"],
    registry=REGISTRY,
)
MODELSERVICE_CANARY_ROLLBACKS = Counter(
    "coxswain_modelservice_canary_rollbacks_total",
    "Canaries rolled back by the automatic analysis.",
    ["namespace", "name"],
    registry=REGISTRY,
)
MODELSERVICE_CANARY_PROMOTIONS = Counter(
    "coxswain_modelservice_canary_promotions_total",
    "Canaries promoted to 100% by the automatic analysis.",
    ["namespace", "name"],
    registry=REGISTRY,
)
MODELSERVICE_SCRAPE_FAILURES = Counter(
    "coxswain_modelservice_scrape_failures_total",
    "Running server pods whose /metrics did not answer a scrape.",
    ["namespace", "name"],
    registry=REGISTRY,
)

_PER_MODELSERVICE = (
    MODELSERVICE_REPLICAS,
    MODELSERVICE_READY_REPLICAS,
    MODELSERVICE_DESIRED_REPLICAS,
    MODELSERVICE_READY,
    MODELSERVICE_INFLIGHT,
    MODELSERVICE_RPS,
    MODELSERVICE_CANARY_TRAFFIC,
    MODELSERVICE_CANARY_ROLLBACKS,
    MODELSERVICE_CANARY_PROMOTIONS,
    MODELSERVICE_SCRAPE_FAILURES,
)


def forget_modelservice(namespace: str, name: str) -> None:
    for metric in _PER_MODELSERVICE:
        with contextlib.suppress(KeyError):  # never set for this service
            metric.remove(namespace, name)
    for direction in ("up", "down"):
        with contextlib.suppress(KeyError):
            MODELSERVICE_SCALE_DECISIONS.remove(namespace, name, direction)


# --- Alerting and dashboard support (helm/coxswain rules and dashboards) ----------------
TRAININGJOB_STALLED = Gauge(
    "coxswain_trainingjob_stalled",
    "1 while the job's Stalled condition is True (no training step for spec.stall.timeoutSeconds), else 0.",
    ["namespace", "name"],
    registry=REGISTRY,
)
# forget_job() removes every gauge in _PER_JOB when a job goes; this one goes with them.
_PER_JOB = (*_PER_JOB, TRAININGJOB_STALLED)


def record_trainingjob_stalled(namespace: str, name: str, stalled: bool) -> None:
    """Mirror the Stalled condition, so an alert can name the job (the condition holds the why)."""
    TRAININGJOB_STALLED.labels(namespace, name).set(1.0 if stalled else 0.0)


def watch_reconcile_pending(kind: str, queue: Sized) -> None:
    """Report `coxswain_reconcile_pending{kind}`: keys queued and waiting for a worker.

    Read when Prometheus scrapes (in its thread; `len` of the queue's set is atomic), so the
    hot path pays nothing.
    """
    RECONCILE_QUEUE.labels(kind).set_function(lambda: float(len(queue)))
