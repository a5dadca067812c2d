"""The TrainingJob controller: kopf watches feed the shared runtime (coxswain.runtime).

- `@kopf.index` keeps each job's batch Jobs and pods in memory (slimmed), so a pass reads
  no lists from the API server.
- `@kopf.on.event` keeps the latest body of every TrainingJob (slimmed) and sees deletions.
- Watch events of Jobs, pods and the TrainingJob itself queue the job's key; the runtime's
  workers run one pass per key at a time. Rank 0's /progress (pulled by design: training
  pods hold no API credentials) is pulled off the reconcile path (progress.py), which queues
  a pass when the answer changes; a pass asks for a later one only when time alone matters
  (stall timeout, deadline, TTL, back-off), else a resync.
- No daemon, no finalizer, no kopf annotations: children go by ownerReference garbage
  collection, our bookkeeping on the DELETED event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from coxswain import metrics, name_conflicts
from coxswain.api import GROUP, TRAININGJOB_PLURAL, VERSION
from coxswain.api.conditions import TrainingJobPhase as Phase
from coxswain.api.conditions import TrainingJobReason as R
from coxswain.api.trainingjob import TrainingJob
from coxswain.cluster_facts import default_storage_class, pod_security_level
from coxswain.conditions import get_condition
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.ownership import NameConflict, slim_owner, trusted_training
from coxswain.runtime import Key, Logger, Runtime
from coxswain.trainingjob import naming
from coxswain.trainingjob.checkpoints import checkpoint_storage
from coxswain.trainingjob.executor import execute
from coxswain.trainingjob.planner import ActionKind, Observed, Plan, plan_reconcile, rank0_pod
from coxswain.trainingjob.progress import ProgressPuller, progress_url
from coxswain.trainingjob.queueing import WORKLOAD_KIND_GROUP, slim_workload

PROGRESS_INTERVAL = 5.0  # seconds between /progress pulls while running
RESYNC_INTERVAL = 60.0  # a safety net; watches do the real waking
# How long a Job this operator created counts as seen before the watch shows it (the watch
# normally does within a second; this only bounds the memory of one that never comes).
MADE_JOB_MEMORY = 60.0
LABELS = {naming.LABEL_TRAININGJOB: kopf.PRESENT}
WORKERS = 32  # concurrent reconcile passes (of different jobs); a pass mostly awaits the API
KIND = "TrainingJob"

log = logging.getLogger("coxswain.trainingjob")

_POD_STATUS_KEYS = ("phase", "reason", "message", "podIP", "conditions", "containerStatuses", "startTime")


def _slim(body: Mapping[str, Any], status_keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Only what the planner reads: keeps the operator small with thousands of pods."""
    meta = body.get("metadata", {})
    status = dict(body.get("status", {}) or {})
    return {
        "metadata": {
            "name": meta.get("name"),
            # Trust goes by the ownerReference chain, not labels (ownership.py).
            **slim_owner(body),
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


def _controller(memo: kopf.Memo) -> Any:
    return Runtime.of(memo).controllers[KIND]


# Index functions run on every watch event of their resource; they also queue the job
# (kopf logs every on.event handler call; an indexer is silent and runs anyway). They are
# async so that they run on the event loop (kopf runs sync handlers in threads): the work
# queue is not thread-safe.
@kopf.index("batch", "v1", "jobs", labels=LABELS)
async def trainingjob_jobs(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    key = (namespace or "", labels[naming.LABEL_TRAININGJOB])
    _controller(memo).wake(key)
    return {key: _slim(body)}


@kopf.index("", "v1", "pods", labels=LABELS)
async def trainingjob_pods(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    key = (namespace or "", labels[naming.LABEL_TRAININGJOB])
    _controller(memo).wake(key)
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
            key = (namespace or "", owner)
            found[key] = slim
            _controller(memo).wake(key)
    return found


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
        runtime.controllers[KIND].forget(key)
        log.info(
            "[%s/%s] TrainingJob deleted; its Jobs, pods, Service and ConfigMap are garbage-collected", *key
        )
    else:
        runtime.controllers[KIND].seen(key, body)
    # A job's success is what a ModelService with trainingJobRef waits for.
    serving = runtime.controllers.get("ModelService")
    if serving is not None:
        for ms_key, ms in list(serving.bodies.items()):
            ref = ((ms.get("spec") or {}).get("model") or {}).get("trainingJobRef") or {}
            if ms_key[0] == key[0] and ref.get("name") == name:
                serving.wake(ms_key)


@dataclass
class TrainingJobs:
    """The TrainingJob kind on the shared runtime."""

    runtime: Runtime
    name: str = KIND
    resource: Any = TRAININGJOB_RESOURCE
    workers: int = WORKERS
    resync: float = RESYNC_INTERVAL
    progress: ProgressPuller = field(init=False)
    # Jobs this operator created that the Job watch has not shown yet, with when (monotonic):
    # the next pass (woken by our own status write) must not create them again.
    made: dict[Key, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        runtime = self.runtime
        self.progress = ProgressPuller(
            runtime.http, runtime.clock, lambda key: runtime.controllers[KIND].wake(key), PROGRESS_INTERVAL
        )
        runtime.background(self.progress.run(gate=runtime.leadership_gate))

    def parse(self, raw: dict[str, Any]) -> TrainingJob:
        return TrainingJob.model_validate(raw)

    async def observe(self, key: Key, tj: TrainingJob) -> Observed:
        # Labels find candidates; only Jobs this TrainingJob controls, and their pods, count.
        jobs, pods = trusted_training(
            tj.metadata.uid,
            self._jobs(key),
            self.runtime.index("trainingjob_pods").get(key, []),
        )
        workloads = list(self.runtime.index("trainingjob_workloads").get(key, []))
        status = tj.status
        # Rank 0's /progress comes from the puller's last answer (no HTTP in a pass); the pass
        # tells it which pod to pull from now on.
        url = None
        if status is not None and status.phase in (Phase.RUNNING, Phase.PENDING) and not tj.spec.suspend:
            current = [
                p for p in pods if p["metadata"]["labels"].get(naming.LABEL_ATTEMPT) == str(status.attempt)
            ]
            url = progress_url(rank0_pod(current), tj.spec.ports.metrics)
        self.progress.want(key, url)
        runtime = self.runtime
        level = pod_security_level(runtime.index("namespace_pod_security"), key[0])
        refusals = tuple(runtime.tenancy.check_trainingjob(key[0], tj.spec, level))
        durable = get_condition(tj.status.conditions if tj.status else [], "CheckpointsDurable")
        # The claim is made right after this record says so (record first, then act).
        claim_made = durable is not None and durable.reason == R.CLAIM_PER_JOB
        storage = checkpoint_storage(
            tj, default_storage_class(runtime.index("default_storage_classes")), claim_made
        )
        return Observed(
            jobs=jobs,
            pods=pods,
            progress=self.progress.latest(key) if url else None,
            workloads=workloads,
            refusals=refusals,
            checkpoint=storage,
        )

    def _jobs(self, key: Key) -> list[dict[str, Any]]:
        """The watched Jobs of `key`, plus the one a pass created that the watch has not shown."""
        jobs = list(self.runtime.index("trainingjob_jobs").get(key, []))
        made = self.made.get(key)
        if made is not None:
            when, job = made
            if any(j["metadata"]["name"] == job["metadata"]["name"] for j in jobs):
                del self.made[key]  # the watch caught up
            elif self.runtime.clock.monotonic() - when > MADE_JOB_MEMORY:
                del self.made[key]
            else:
                jobs.append(job)
        return jobs

    def _made(self, job: dict[str, Any]) -> None:
        meta = job.get("metadata") or {}
        key = (meta.get("namespace") or "", (meta.get("labels") or {}).get(naming.LABEL_TRAININGJOB, ""))
        self.made[key] = (self.runtime.clock.monotonic(), _slim(job))

    def plan(self, key: Key, tj: TrainingJob, observed: Observed) -> Plan:
        return plan_reconcile(tj, observed, self.runtime.clock.now())

    async def act(self, tj: TrainingJob, plan: Plan, logger: Logger) -> dict[str, Any] | None:
        conflict: NameConflict | None = None
        try:
            await execute(self.runtime.client, tj, plan, logger, self._made)
        except NameConflict as exc:
            conflict = exc
            logger.warning("%s", exc)
            self.runtime.post_event(tj.to_dict(), "Warning", "NameConflict", str(exc))
        key = (tj.metadata.namespace or "", tj.metadata.name or "")
        return await name_conflicts.record(
            self.runtime.client,
            self.resource,
            key,
            plan.status.conditions,
            conflict,
            self.runtime.clock.now(),
            tj.metadata.generation,
        )

    def record(self, key: Key, tj: TrainingJob, plan: Plan, observed: Observed) -> float:
        _record_metrics(tj, plan)
        # No fixed re-pass while running: watch events and a changed /progress queue the job,
        # and the planner asks for the passes time alone would need (stall, deadline, TTL).
        return plan.requeue_after if plan.requeue_after is not None else RESYNC_INTERVAL

    def forget(self, key: Key) -> None:
        self.progress.forget(key)
        self.made.pop(key, None)


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
