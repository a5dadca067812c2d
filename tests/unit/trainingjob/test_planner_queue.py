"""The planner with `spec.queueName`: Kueue owns the Job's suspend; Queued, admission and
preemption (never charged) follow the Job and its Workload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from coxswain.api.trainingjob import TrainingJob
from coxswain.trainingjob.planner import ActionKind, Observed, Plan, plan_reconcile
from coxswain.trainingjob.queueing import slim_workload

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PENDING = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor kwok-gpu, 2 more needed"
EVICTED = (
    "Preempted to accommodate a workload (UID: 42, JobUID: 43) due to prioritization in the ClusterQueue"
)


def make(status: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    base: dict[str, Any] = {
        "task": {"builtin": {"model": "mlp", "dataset": "digits"}},
        "nodes": 2,
        "queueName": "team-a",
        "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 10, "maxBackoffSeconds": 60},
    }
    base.update(spec)
    doc: dict[str, Any] = {"metadata": {"name": "tj", "namespace": "ns", "uid": "u1", "generation": 1}}
    doc["spec"] = base
    if status is not None:
        doc["status"] = status
    return TrainingJob.model_validate(doc)


def job(attempt: int, suspend: bool) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"tj-{attempt}",
            "labels": {"coxswain.dev/trainingjob": "tj", "coxswain.dev/attempt": str(attempt)},
        },
        "spec": {"suspend": suspend},
        "status": {},
    }


def workload(*conditions: tuple[str, str, str], cluster_queue: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "job-tj-1-abcde", "ownerReferences": [{"kind": "Job", "name": "tj-1"}]},
        "status": {
            "conditions": [{"type": t, "status": s, "reason": "R", "message": m} for t, s, m in conditions],
        },
    }
    if cluster_queue:
        body["status"]["admission"] = {"clusterQueue": cluster_queue, "podSetAssignments": []}
    return slim_workload(body)


def cond(plan: Plan, type_: str) -> Any:
    return next(c for c in plan.status.conditions if c.type == type_)


def step(plan: Plan, observed: Observed, at: datetime = NOW, **spec: Any) -> Plan:
    return plan_reconcile(make(status=plan.status.to_dict(), **spec), observed, at)


def test_queued_job_is_created_and_shown_queued_not_pending() -> None:
    plan = plan_reconcile(make(), Observed(jobs=[], pods=[]), NOW)
    assert (ActionKind.CREATE_JOB, "tj-1") in [(a.kind, a.name) for a in plan.actions]
    assert plan.status.phase == "Queued"
    assert cond(plan, "Queued").reason == "WaitingForAdmission"
    assert "LocalQueue team-a" in cond(plan, "Queued").message
    assert plan.status.start_time is None, "the deadline counts from admission"
    assert plan.status.preemptions == 0


def test_the_planner_never_unsuspends_a_queued_job_and_shows_kueues_reason() -> None:
    created = plan_reconcile(make(), Observed(jobs=[], pods=[]), NOW)
    waiting = step(
        created,
        Observed(
            jobs=[job(1, suspend=True)], pods=[], workloads=[workload(("QuotaReserved", "False", PENDING))]
        ),
    )
    assert not [a for a in waiting.actions if a.kind == ActionKind.RESUME_JOB]
    assert waiting.status.phase == "Queued"
    assert cond(waiting, "Queued").reason == "Inadmissible"
    assert PENDING in cond(waiting, "Queued").message
    assert cond(waiting, "Running").status == "False"


def test_admission_then_preemption_requeues_without_charging_then_resumes() -> None:
    created = plan_reconcile(make(), Observed(jobs=[], pods=[]), NOW)
    admitted = step(
        created,
        Observed(
            jobs=[job(1, suspend=False)],
            pods=[],
            workloads=[workload(("QuotaReserved", "True", ""), cluster_queue="gpus")],
        ),
    )
    assert cond(admitted, "Queued").status == "False" and cond(admitted, "Queued").reason == "Admitted"
    assert "ClusterQueue gpus" in cond(admitted, "Queued").message
    assert admitted.status.phase == "Pending" and admitted.status.start_time == NOW

    evicted = Observed(
        jobs=[job(1, suspend=True)], pods=[], workloads=[workload(("Evicted", "True", EVICTED))]
    )
    preempted = step(admitted, evicted, NOW + timedelta(seconds=30))
    assert preempted.status.phase == "Queued"
    assert cond(preempted, "Queued").reason == "Preempted"
    assert EVICTED in cond(preempted, "Queued").message
    assert preempted.status.preemptions == 1 and preempted.preempted
    assert (preempted.status.restarts, preempted.status.uncounted_restarts) == (0, 0)
    assert preempted.status.attempt == 1, "the same Job resumes: no new attempt"
    assert not [a for a in preempted.actions if a.kind in (ActionKind.DELETE_JOB, ActionKind.RESUME_JOB)]

    # Level-triggered: the same observation again counts nothing more.
    again = step(preempted, evicted, NOW + timedelta(seconds=31))
    assert again.status.preemptions == 1 and not again.preempted
    assert cond(again, "Queued").reason == "Preempted"

    readmitted = step(
        again,
        Observed(jobs=[job(1, suspend=False)], pods=[], workloads=[workload(cluster_queue="gpus")]),
        NOW + timedelta(seconds=60),
    )
    assert cond(readmitted, "Queued").reason == "Admitted"
    assert "resuming from the last checkpoint" in cond(readmitted, "Queued").message
    assert readmitted.status.preemptions == 1 and readmitted.status.restarts == 0


def test_queued_time_does_not_count_against_the_deadline() -> None:
    created = plan_reconcile(make(activeDeadlineSeconds=60), Observed(jobs=[], pods=[]), NOW)
    later = step(
        created,
        Observed(jobs=[job(1, suspend=True)], pods=[]),
        NOW + timedelta(hours=2),
        activeDeadlineSeconds=60,
    )
    assert later.status.phase == "Queued"


def test_users_suspend_deletes_the_queued_job_and_resume_queues_a_new_one() -> None:
    created = plan_reconcile(make(), Observed(jobs=[], pods=[]), NOW)
    held = step(created, Observed(jobs=[job(1, suspend=True)], pods=[]), suspend=True)
    assert (ActionKind.DELETE_JOB, "tj-1") in [(a.kind, a.name) for a in held.actions]
    assert held.status.phase == "Suspended"
    resumed = step(held, Observed(jobs=[], pods=[]))
    assert (ActionKind.CREATE_JOB, "tj-1") in [(a.kind, a.name) for a in resumed.actions]
    assert resumed.status.phase == "Queued"
    assert cond(resumed, "Suspended").status == "False"


def test_without_a_queue_a_suspended_job_is_resumed_as_before() -> None:
    tj = make(queueName=None, status={"attempt": 1, "phase": "Pending", "observedGeneration": 1})
    plan = plan_reconcile(tj, Observed(jobs=[job(1, suspend=True)], pods=[]), NOW)
    assert (ActionKind.RESUME_JOB, "tj-1") in [(a.kind, a.name) for a in plan.actions]
    assert plan.status.preemptions is None


def test_a_job_failed_by_the_pods_its_preemption_killed_requeues_the_next_attempt_uncharged() -> None:
    status = {
        "attempt": 1,
        "phase": "Queued",
        "observedGeneration": 1,
        "restarts": 0,
        "uncountedRestarts": 0,
        "preemptions": 1,
        "conditions": [
            {
                "type": "Queued",
                "status": "True",
                "reason": "Preempted",
                "message": EVICTED,
                "lastTransitionTime": NOW.isoformat(),
            }
        ],
    }
    failed = job(1, suspend=True)
    failed["status"] = {"conditions": [{"type": "Failed", "status": "True", "message": "exit code 137"}]}
    plan = plan_reconcile(make(status=status), Observed(jobs=[failed], pods=[]), NOW)
    assert (ActionKind.DELETE_JOB, "tj-1") in [(a.kind, a.name) for a in plan.actions]
    assert plan.status.attempt == 2 and plan.status.phase == "Queued"
    assert (plan.status.restarts, plan.status.uncounted_restarts, plan.status.preemptions) == (0, 0, 1)
    nxt = step(plan, Observed(jobs=[], pods=[]))
    assert (ActionKind.CREATE_JOB, "tj-2") in [(a.kind, a.name) for a in nxt.actions]
    assert cond(nxt, "Queued").reason == "Preempted", "Kueue's eviction message stays until admission"
    admitted = step(nxt, Observed(jobs=[job(2, suspend=False)], pods=[]))
    assert "resuming from the last checkpoint" in cond(admitted, "Queued").message


def test_a_readmitted_job_failed_by_pods_killed_before_readmission_is_not_charged() -> None:
    readmitted_at = NOW - timedelta(seconds=5)
    status = {
        "attempt": 1,
        "phase": "Pending",
        "observedGeneration": 1,
        "restarts": 0,
        "uncountedRestarts": 0,
        "preemptions": 1,
        "conditions": [
            {
                "type": "Queued",
                "status": "False",
                "reason": "Admitted",
                "message": "Kueue admitted all 2 pods; resuming from the last checkpoint",
                "lastTransitionTime": readmitted_at.isoformat(),
            }
        ],
    }
    failed = job(1, suspend=False)
    failed["status"] = {"conditions": [{"type": "Failed", "status": "True", "message": "exit code 137"}]}
    plan = plan_reconcile(make(status=status), Observed(jobs=[failed], pods=[]), NOW)
    assert plan.status.attempt == 2 and plan.status.phase == "Queued"
    assert (plan.status.restarts, plan.status.uncounted_restarts) == (0, 0)
    assert cond(plan, "Queued").reason == "Preempted"
