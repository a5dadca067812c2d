"""kopf wiring for TrainingJobs: watches wake one reconcile loop per job; the logic is elsewhere.

- `@kopf.index` keeps each job's batch Jobs and pods in memory (slimmed), so a reconcile
  pass reads no lists from the API server.
- Watch events of Jobs, pods and the TrainingJob itself wake that job's loop (no polling of
  the API). The loop also wakes on its own every few seconds while running, to pull rank
  0's /progress (pulled by design: training pods hold no API credentials).
- kopf starts the loop (a daemon) for every TrainingJob, also after an operator restart, and
  cancels it when the object goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from lightkube import ApiError

from coxswain import events, metrics
from coxswain.api import GROUP, TRAININGJOB_PLURAL, VERSION
from coxswain.api.conditions import TrainingJobPhase as Phase
from coxswain.api.trainingjob import TrainingJob
from coxswain.runtime import Runtime
from coxswain.trainingjob import naming
from coxswain.trainingjob.executor import execute, fetch_progress, patch_status
from coxswain.trainingjob.planner import ActionKind, Observed, plan_reconcile, rank0_pod

PROGRESS_INTERVAL = 5.0  # seconds between /progress pulls while running
RESYNC_INTERVAL = 60.0  # a safety net; watches do the real waking
LABELS = {naming.LABEL_TRAININGJOB: kopf.PRESENT}

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


# Index functions run on every watch event of their resource; they also wake the job's loop
# (kopf logs every on.event handler call; an indexer is silent and runs anyway).
@kopf.index("batch", "v1", "jobs", labels=LABELS)
def trainingjob_jobs(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    key = (namespace or "", labels[naming.LABEL_TRAININGJOB])
    Runtime.of(memo).wake(*key)
    return {key: _slim(body)}


@kopf.index("", "v1", "pods", labels=LABELS)
def trainingjob_pods(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    key = (namespace or "", labels[naming.LABEL_TRAININGJOB])
    Runtime.of(memo).wake(*key)
    return {key: _slim(body, _POD_STATUS_KEYS)}


@kopf.index(GROUP, VERSION, TRAININGJOB_PLURAL)
def trainingjob_wakeup(*, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Spec changes (suspend, deadline, ...) take effect at once."""
    Runtime.of(memo).wake(namespace or "", name)


@kopf.on.delete(GROUP, VERSION, TRAININGJOB_PLURAL, optional=True)
def trainingjob_deleted(
    *, namespace: str | None, name: str, uid: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    # Children go by ownerReference garbage collection; only our own bookkeeping is left.
    metrics.forget_job(namespace or "", name, uid)
    Runtime.of(memo).forget(namespace or "", name)
    logger.info("TrainingJob deleted; its Jobs, pods, Service and ConfigMap are garbage-collected")


@kopf.daemon(GROUP, VERSION, TRAININGJOB_PLURAL, cancellation_timeout=5.0)
async def trainingjob_loop(
    *,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    # kopf injects indexes by their function's name.
    jobs_index: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["trainingjob_jobs"]
    pods_index: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["trainingjob_pods"]
    runtime = Runtime.of(memo)
    key = (namespace or "", name)
    wake = runtime.waker(*key)
    while not stopped:
        wake.clear()
        delay = RESYNC_INTERVAL
        started = time.monotonic()
        try:
            delay = await reconcile(
                body,
                runtime,
                logger,
                list(jobs_index.get(key, [])),
                list(pods_index.get(key, [])),
            )
        except ApiError as exc:
            metrics.RECONCILE_ERRORS.labels("TrainingJob").inc()
            logger.warning("reconcile failed, retrying in 5 s: %s", exc.status.message)
            delay = 5.0
        except ValueError as exc:
            # The API server's schema should make this impossible; say so rather than loop.
            metrics.RECONCILE_ERRORS.labels("TrainingJob").inc()
            logger.error("this TrainingJob does not parse (is the CRD older than the operator?): %s", exc)
            delay = RESYNC_INTERVAL
        finally:
            metrics.RECONCILE_DURATION.labels("TrainingJob").observe(time.monotonic() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=delay)


async def reconcile(
    body: kopf.Body,
    runtime: Runtime,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
) -> float:
    """One pass; returns the seconds until the next pass is needed without a watch event."""
    raw = runtime.freshest(dict(body))
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
    plan = plan_reconcile(tj, Observed(jobs=jobs, pods=pods, progress=progress), datetime.now(UTC))

    old_status = status.to_dict() if status else {}
    new_status = plan.status.to_dict()
    if new_status != old_status:
        # Nulls clear fields a merge patch would otherwise keep.
        cleared = {k: None for k in old_status if k not in new_status}
        runtime.remember(await patch_status(runtime.client, tj, {**cleared, **new_status}))
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
