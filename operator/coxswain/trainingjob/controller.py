"""kopf wiring for TrainingJobs: watch events queue the job for a reconcile pass; the logic is elsewhere.

- `@kopf.index` keeps each job's batch Jobs and pods in memory (slimmed), so a reconcile
  pass reads no lists from the API server.
- `@kopf.on.event` keeps the latest body of every TrainingJob (slimmed) and sees deletions.
- Watch events of Jobs, pods and the TrainingJob itself add the job's key to a work queue
  (`coxswain.workqueue`, no polling of the API) that a few workers serve, one pass per key at a
  time. A pass asks for the next one after a delay: every few seconds while running, to pull
  rank 0's /progress (pulled by design: training pods hold no API credentials), else a resync.
- No daemon per object: those cost ~200 KB each and made kopf put a finalizer on every
  TrainingJob (deletion hung while the operator was down). Nothing here needs a finalizer:
  children go by ownerReference garbage collection, our bookkeeping on the DELETED event.
- Peering: the workers wait while kopf holds this replica paused (see `startup`), and skip
  bodies delivered before the end of the last pause (the re-listing brings fresh ones).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from lightkube import ApiError

from coxswain import events, metrics
from coxswain.api import GROUP, TRAININGJOB_PLURAL, VERSION
from coxswain.api.conditions import TrainingJobPhase as Phase
from coxswain.api.trainingjob import TrainingJob
from coxswain.runtime import Key, Runtime
from coxswain.trainingjob import naming
from coxswain.trainingjob.executor import execute, fetch_progress, patch_status
from coxswain.trainingjob.planner import ActionKind, Observed, plan_reconcile, rank0_pod
from coxswain.trainingjob.queueing import WORKLOAD_KIND_GROUP, slim_workload

PROGRESS_INTERVAL = 5.0  # seconds between /progress pulls while running
RESYNC_INTERVAL = 60.0  # a safety net; watches do the real waking
LABELS = {naming.LABEL_TRAININGJOB: kopf.PRESENT}
WORKERS = 8  # concurrent reconcile passes (of different jobs); a pass mostly awaits the API

log = logging.getLogger("coxswain.trainingjob")

# Large and never read by the planner or the builders: not kept in memory for every job.
_DROPPED_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration",
    "coxswain.dev/last-handled-configuration",
)

_POD_STATUS_KEYS = ("phase", "reason", "message", "podIP", "conditions", "containerStatuses", "startTime")


def _slim(body: kopf.Body, status_keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Only what the planner reads: keeps the operator small with thousands of pods."""
    meta = body.get("metadata", {})
    status = dict(body.get("status", {}) or {})
    return {
        "metadata": {
            "name": meta.get("name"),
            "labels": dict(meta.get("labels", {}) or {}),
            "annotations": {
                k: v
                for k, v in (meta.get("annotations", {}) or {}).items()
                if k == naming.ANNOTATION_COMPLETION_INDEX
            },
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": {"suspend": (body.get("spec", {}) or {}).get("suspend")},
        "status": {k: status[k] for k in status_keys if k in status} if status_keys else status,
    }


# Index functions run on every watch event of their resource; they also queue the job
# (kopf logs every on.event handler call; an indexer is silent and runs anyway). They are
# async so that they run on the event loop (kopf runs sync handlers in threads): the work
# queue is not thread-safe.
@kopf.index("batch", "v1", "jobs", labels=LABELS)
async def trainingjob_jobs(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    key = (namespace or "", labels[naming.LABEL_TRAININGJOB])
    Runtime.of(memo).wake(*key)
    return {key: _slim(body)}


@kopf.index("", "v1", "pods", labels=LABELS)
async def trainingjob_pods(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    key = (namespace or "", labels[naming.LABEL_TRAININGJOB])
    Runtime.of(memo).wake(*key)
    return {key: _slim(body, _POD_STATUS_KEYS)}


# Kueue's Workloads (TrainingJobs with spec.queueName): they carry none of our labels, only an
# ownerReference to the attempt's Job, whose name gives the TrainingJob. Where Kueue is not
# installed kopf finds no such resource and watches nothing.
@kopf.index(WORKLOAD_KIND_GROUP, "v1beta2", "workloads")
async def trainingjob_workloads(
    *, namespace: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    slim = slim_workload(dict(body))
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for job in slim["metadata"]["jobs"]:
        owner = naming.trainingjob_of_batch_job(job or "")
        if owner:
            found[(namespace or "", owner)] = slim
            Runtime.of(memo).wake(namespace or "", owner)
    return found


def _slim_trainingjob(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(body.get("metadata", {}) or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in _DROPPED_ANNOTATIONS}
    return {**body, "metadata": meta}


# kopf's "Handler 'trainingjob_seen' succeeded." INFO line on every event is dropped by a log
# filter (cli/operator.py).
@kopf.on.event(GROUP, VERSION, TRAININGJOB_PLURAL)
async def trainingjob_seen(
    *, type: str | None, namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Keep the latest body and queue the job: spec changes (suspend, deadline, ...) act at once."""
    runtime = Runtime.of(memo)
    key = (namespace or "", name)
    if type == "DELETED":
        # Children go by ownerReference garbage collection; only our own bookkeeping is left.
        metrics.forget_job(key[0], name, body.get("metadata", {}).get("uid", ""))
        runtime.forget(*key)
        log.info(
            "[%s/%s] TrainingJob deleted; its Jobs, pods, Service and ConfigMap are garbage-collected", *key
        )
        return
    runtime.bodies[key] = (_slim_trainingjob(body), asyncio.get_running_loop().time())
    runtime.wake(*key)


@kopf.on.delete(GROUP, VERSION, TRAININGJOB_PLURAL, optional=True)
async def trainingjob_deleted(
    *, namespace: str | None, name: str, uid: str, memo: kopf.Memo, **_: Any
) -> None:
    # Optional: no finalizer. Runs only when something else holds the object (a foreground
    # deletion); the DELETED event (trainingjob_seen) does the same in every case.
    metrics.forget_job(namespace or "", name, uid)
    Runtime.of(memo).forget(namespace or "", name)


class _JobLog(logging.LoggerAdapter[logging.Logger]):
    """The operator's lines about one job, prefixed like kopf's: "[namespace/name] ..."."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['key'] if self.extra else ''}] {msg}", kwargs


async def process(runtime: Runtime, key: Key) -> float | None:
    """One worker pass of one job; returns the seconds until its next pass (None: none)."""
    seen = runtime.bodies.get(key)
    if seen is None:
        return None  # deleted, or its Jobs/pods came before its own watch event
    body, received = seen
    if received < runtime.resumed_at:
        return None  # seen before a peering pause: the re-listing after it queues a fresh body
    jobs_index = runtime.indexes.get("trainingjob_jobs", {})
    pods_index = runtime.indexes.get("trainingjob_pods", {})
    workloads_index = runtime.indexes.get("trainingjob_workloads", {})
    logger = _JobLog(log, {"key": f"{key[0]}/{key[1]}"})
    started = time.monotonic()
    try:
        return await reconcile(
            body,
            runtime,
            logger,
            list(jobs_index.get(key, [])),
            list(pods_index.get(key, [])),
            list(workloads_index.get(key, [])),
        )
    except ApiError as exc:
        metrics.RECONCILE_ERRORS.labels("TrainingJob").inc()
        logger.warning("reconcile failed, retrying in 5 s: %s", exc.status.message)
        return 5.0
    except ValueError as exc:
        # The API server's schema should make this impossible; say so rather than loop.
        metrics.RECONCILE_ERRORS.labels("TrainingJob").inc()
        logger.error("this TrainingJob does not parse (is the CRD older than the operator?): %s", exc)
        return RESYNC_INTERVAL
    finally:
        metrics.RECONCILE_DURATION.labels("TrainingJob").observe(time.monotonic() - started)


async def reconcile(
    body: Mapping[str, Any],
    runtime: Runtime,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    workloads: list[dict[str, Any]] | None = None,
) -> float:
    """One pass; returns the seconds until the next pass is needed without a watch event."""
    raw = runtime.written.freshest(dict(body))
    if raw.get("metadata", {}).get("deletionTimestamp"):
        return RESYNC_INTERVAL
    tj = TrainingJob.model_validate(raw)
    status = tj.status
    progress = None
    if status is not None and status.phase in (Phase.RUNNING, Phase.PENDING) and not tj.spec.suspend:
        current = [
            p for p in pods if p["metadata"]["labels"].get(naming.LABEL_ATTEMPT) == str(status.attempt)
        ]
        progress = await fetch_progress(runtime.http, rank0_pod(current), tj.spec.ports.metrics)
    plan = plan_reconcile(
        tj, Observed(jobs=jobs, pods=pods, progress=progress, workloads=workloads or []), datetime.now(UTC)
    )

    old_status = status.to_dict() if status else {}
    new_status = plan.status.to_dict()
    if new_status != old_status:
        # Nulls clear fields a merge patch would otherwise keep.
        cleared = {k: None for k in old_status if k not in new_status}
        runtime.written.remember(await patch_status(runtime.client, tj, {**cleared, **new_status}))
    await execute(runtime.client, tj, plan, logger)
    for event in plan.events:
        events.post(raw, event.type, event.reason, event.message)
    _record_metrics(tj, plan)

    phase = plan.status.phase
    delay = plan.requeue_after if plan.requeue_after is not None else RESYNC_INTERVAL
    if phase in (Phase.RUNNING, Phase.PENDING):
        delay = min(delay, PROGRESS_INTERVAL)
    return delay


def _record_metrics(tj: TrainingJob, plan: Any) -> None:
    ns, name, uid = tj.metadata.namespace or "", tj.metadata.name or "", tj.metadata.uid or ""
    status = plan.status
    metrics.set_job_phase(uid, status.phase.value if status.phase else None)
    if any(a.kind == ActionKind.CREATE_JOB and a.attempt == 1 for a in plan.actions) and (
        tj.status is None or tj.status.phase is None
    ):
        metrics.TRAININGJOBS_CREATED.inc()
    if plan.preempted:
        metrics.TRAININGJOBS_PREEMPTIONS.inc()
    if plan.restart is not None:
        metrics.TRAININGJOBS_RESTARTS.labels(plan.restart.cause, str(plan.restart.charged).lower()).inc()
    if plan.finished == Phase.SUCCEEDED:
        metrics.TRAININGJOBS_SUCCEEDED.inc()
    elif plan.finished == Phase.FAILED:
        failed = next((c for c in status.conditions if c.type == "Failed"), None)
        metrics.TRAININGJOBS_FAILED.labels(failed.reason if failed else "Unknown").inc()
    metrics.record_trainingjob_stalled(
        ns, name, any(c.type == "Stalled" and c.status == "True" for c in status.conditions)
    )
    budget = tj.spec.failure_policy.max_restarts
    metrics.TRAININGJOB_RESTART_BUDGET.labels(ns, name).set(
        (status.restarts or 0) / budget if budget else 0.0
    )
    progress = status.progress
    if progress is not None:
        if progress.percent is not None:
            metrics.TRAININGJOB_PROGRESS.labels(ns, name).set(progress.percent / 100.0)
        if progress.eta_seconds is not None:
            metrics.TRAININGJOB_ETA.labels(ns, name).set(progress.eta_seconds)
        if progress.train_loss is not None:
            metrics.TRAININGJOB_LOSS.labels(ns, name).set(progress.train_loss)
