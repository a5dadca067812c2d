"""The operator's own Prometheus metrics (served by `coxswain operator run` on /metrics).

Names follow design.md: `coxswain_` prefix, base units. Per-job series carry only
`namespace` and `name`, and are removed when the job goes, so cardinality follows the
number of live objects.
"""

from __future__ import annotations

import contextlib

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

_PER_JOB = (TRAININGJOB_PROGRESS, TRAININGJOB_ETA, TRAININGJOB_LOSS, TRAININGJOB_RESTART_BUDGET)
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
