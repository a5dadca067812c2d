"""The planner when nodes/procsPerNode change while suspended: a new attempt for the new gang,
not charged, recorded in status.attempts with its world size and the step it resumed from."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from coxswain.api.trainingjob import TrainingJob
from coxswain.trainingjob import builders
from coxswain.trainingjob.planner import ActionKind, Observed, Plan, plan_reconcile

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make(status: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    base: dict[str, Any] = {"task": {"builtin": {"model": "mlp", "dataset": "digits"}}, "nodes": 2}
    base.update(spec)
    doc: dict[str, Any] = {
        "metadata": {"name": "tj", "namespace": "ns", "uid": "u1", "generation": 2},
        "spec": base,
    }
    if status is not None:
        doc["status"] = status
    return TrainingJob.model_validate(doc)


def job(attempt: int, suspend: bool = False) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"tj-{attempt}",
            "labels": {"coxswain.dev/trainingjob": "tj", "coxswain.dev/attempt": str(attempt)},
        },
        "spec": {"suspend": suspend},
        "status": {},
    }


def kinds(plan: Plan) -> list[tuple[ActionKind, str]]:
    return [(a.kind, a.name) for a in plan.actions]


def cond(plan: Plan, type_: str) -> Any:
    return next(c for c in plan.status.conditions if c.type == type_)


def suspended_at_two_nodes() -> dict[str, Any]:
    """Status of a job whose attempt 1 ran 2 x 1 and was then suspended."""
    created = plan_reconcile(make(), Observed(jobs=[], pods=[]), NOW)
    suspended = plan_reconcile(
        make(status=created.status.to_dict(), suspend=True), Observed(jobs=[job(1)], pods=[]), NOW
    )
    assert suspended.status.phase == "Suspended"
    return suspended.status.to_dict()


def test_the_job_of_an_attempt_records_its_gang() -> None:
    plan = plan_reconcile(make(procsPerNode=3), Observed(jobs=[], pods=[]), NOW)
    assert (ActionKind.CREATE_JOB, "tj-1") in kinds(plan)
    (record,) = plan.status.attempts
    assert (record.attempt, record.nodes, record.procs_per_node, record.world_size) == (1, 2, 3, 6)


def test_shrinking_while_suspended_ends_the_attempt_without_charge() -> None:
    status = suspended_at_two_nodes()
    plan = plan_reconcile(
        make(status=status, nodes=1, suspend=True), Observed(jobs=[job(1, suspend=True)], pods=[]), NOW
    )
    assert plan.status.attempt == 2
    assert (ActionKind.DELETE_JOB, "tj-1") in kinds(plan)
    assert not [k for k, _ in kinds(plan) if k == ActionKind.CREATE_JOB], "nothing runs while suspended"
    assert plan.status.phase == "Suspended"
    assert plan.status.restarts == 0 and plan.status.uncounted_restarts == 0
    (event,) = [e for e in plan.events if e.reason == "GangResized"]
    assert "2 x 1 to 1 x 1" in event.message and "attempt 2" in event.message
    assert "not charged" in event.message


def test_resuming_after_a_resize_makes_the_next_attempt_with_the_new_gang() -> None:
    status = suspended_at_two_nodes()
    resized = plan_reconcile(
        make(status=status, nodes=1, suspend=True), Observed(jobs=[job(1, suspend=True)], pods=[]), NOW
    )
    # The old Job is still going: the new attempt waits for it (its pods may be checkpointing).
    waiting = plan_reconcile(
        make(status=resized.status.to_dict(), nodes=1), Observed(jobs=[job(1, suspend=True)], pods=[]), NOW
    )
    assert (ActionKind.DELETE_JOB, "tj-1") in kinds(waiting)
    assert not [k for k, _ in kinds(waiting) if k == ActionKind.CREATE_JOB]
    resumed = plan_reconcile(make(status=resized.status.to_dict(), nodes=1), Observed(jobs=[], pods=[]), NOW)
    assert (ActionKind.CREATE_JOB, "tj-2") in kinds(resumed)
    assert resumed.status.phase == "Pending"
    assert cond(resumed, "Suspended").status == "False"
    assert [e.reason for e in resumed.events].count("JobResumed") == 1
    assert [(r.attempt, r.nodes, r.world_size) for r in resumed.status.attempts] == [(1, 2, 2), (2, 1, 1)]
    assert resumed.status.restarts == 0 and resumed.status.uncounted_restarts == 0


def test_resize_and_resume_in_one_update() -> None:
    status = suspended_at_two_nodes()
    plan = plan_reconcile(
        make(status=status, nodes=4, procsPerNode=2), Observed(jobs=[job(1, suspend=True)], pods=[]), NOW
    )
    assert plan.status.attempt == 2
    assert (ActionKind.DELETE_JOB, "tj-1") in kinds(plan)
    assert (ActionKind.RESUME_JOB, "tj-1") not in kinds(plan), "the old gang's Job is never resumed"
    created = plan_reconcile(
        make(status=plan.status.to_dict(), nodes=4, procsPerNode=2), Observed(jobs=[], pods=[]), NOW
    )
    assert (ActionKind.CREATE_JOB, "tj-2") in kinds(created)
    assert created.status.attempts[-1].world_size == 8


def test_unchanged_gang_resumes_the_same_attempt() -> None:
    status = suspended_at_two_nodes()
    plan = plan_reconcile(make(status=status), Observed(jobs=[job(1, suspend=True)], pods=[]), NOW)
    assert plan.status.attempt == 1
    assert (ActionKind.RESUME_JOB, "tj-1") in kinds(plan)
    assert not [e for e in plan.events if e.reason == "GangResized"]


def test_a_job_made_before_attempts_were_recorded_is_read_for_its_shape() -> None:
    old = make()
    made = builders.build_job(old, 1)
    made["metadata"]["labels"]["coxswain.dev/attempt"] = "1"
    made["spec"]["suspend"] = True
    status = {"attempt": 1, "phase": "Suspended", "observedGeneration": 1, "restarts": 0}
    plan = plan_reconcile(make(status=status, nodes=1, suspend=True), Observed(jobs=[made], pods=[]), NOW)
    assert plan.status.attempt == 2
    assert (ActionKind.DELETE_JOB, "tj-1") in kinds(plan)


def test_the_step_an_attempt_resumed_from_is_recorded_for_it() -> None:
    status = suspended_at_two_nodes()
    resized = plan_reconcile(
        make(status=status, nodes=1, suspend=True), Observed(jobs=[job(1, suspend=True)], pods=[]), NOW
    )
    created = plan_reconcile(make(status=resized.status.to_dict(), nodes=1), Observed(jobs=[], pods=[]), NOW)
    running = plan_reconcile(
        make(status=created.status.to_dict(), nodes=1),
        Observed(jobs=[job(2)], pods=[], progress={"step": 50, "resumedFromStep": 40, "worldSize": 1}),
        NOW,
    )
    assert running.status.resumed_from_step == 40
    assert [(r.attempt, r.resumed_from_step) for r in running.status.attempts] == [(1, None), (2, 40)]
