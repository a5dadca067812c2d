"""The planner: an observation in, status and actions out; level-triggered and idempotent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from coxswain.api.trainingjob import TrainingJob
from coxswain.trainingjob.planner import ActionKind, Observed, backoff_seconds, plan_reconcile

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make(status: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    base: dict[str, Any] = {
        "task": {"builtin": {"model": "mlp", "dataset": "digits"}},
        "nodes": 2,
        "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 10, "maxBackoffSeconds": 60},
    }
    base.update(spec)
    doc: dict[str, Any] = {
        "metadata": {"name": "tj", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": base,
    }
    if status is not None:
        doc["status"] = status
    return TrainingJob.model_validate(doc)


def job(attempt: int, *conditions: str, suspend: bool = False) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"tj-{attempt}",
            "labels": {"coxswain.dev/trainingjob": "tj", "coxswain.dev/attempt": str(attempt)},
        },
        "spec": {"suspend": suspend},
        "status": {"conditions": [{"type": c, "status": "True", "message": f"job {c}"} for c in conditions]},
    }


def pod(
    attempt: int, rank: int, phase: str = "Running", exit_code: int | None = None, **status: Any
) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": phase, **status}
    if exit_code is not None:
        st["containerStatuses"] = [
            {"state": {"terminated": {"exitCode": exit_code, "finishedAt": "2026-01-01T11:59:00Z"}}}
        ]
    return {
        "metadata": {
            "name": f"tj-{attempt}-{rank}-x",
            "labels": {
                "coxswain.dev/attempt": str(attempt),
                "batch.kubernetes.io/job-completion-index": str(rank),
            },
        },
        "status": st,
    }


def kinds(plan: Any) -> list[tuple[ActionKind, str]]:
    return [(a.kind, a.name) for a in plan.actions]


def cond(plan: Any, type_: str) -> Any:
    return next(c for c in plan.status.conditions if c.type == type_)


def test_new_job_creates_config_service_and_attempt_1() -> None:
    plan = plan_reconcile(make(), Observed(jobs=[], pods=[]), NOW)
    assert kinds(plan) == [
        (ActionKind.ENSURE_CONFIG, ""),
        (ActionKind.ENSURE_SERVICE, ""),
        (ActionKind.CREATE_JOB, "tj-1"),
    ]
    assert plan.status.phase == "Pending"
    assert plan.status.attempt == 1
    assert plan.status.start_time == NOW
    assert cond(plan, "Created").status == "True"


def test_same_observation_twice_plans_the_same_create() -> None:
    tj = make()
    first = plan_reconcile(tj, Observed(jobs=[], pods=[]), NOW)
    again = plan_reconcile(make(status=first.status.to_dict()), Observed(jobs=[], pods=[]), NOW)
    assert (ActionKind.CREATE_JOB, "tj-1") in kinds(again), "creation is retried; AlreadyExists is fine"


def test_all_pods_running_is_running() -> None:
    tj = make(status={"attempt": 1, "phase": "Pending", "observedGeneration": 1})
    plan = plan_reconcile(tj, Observed(jobs=[job(1)], pods=[pod(1, 0), pod(1, 1)]), NOW)
    assert plan.status.phase == "Running"
    assert cond(plan, "Running").status == "True"
    assert plan.actions == []


def test_pending_reason_quotes_the_scheduler() -> None:
    tj = make(status={"attempt": 1, "phase": "Pending", "observedGeneration": 1})
    unschedulable = pod(
        1,
        1,
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    plan = plan_reconcile(tj, Observed(jobs=[job(1)], pods=[pod(1, 0), unschedulable]), NOW)
    message = cond(plan, "Running").message
    assert "1/2 pods running" in message and "Insufficient nvidia.com/gpu" in message


def test_pods_on_their_way_leave_the_status_as_it_was() -> None:
    # each pod step (created, scheduled, running) would otherwise be a status write, a watch
    # event back and another pass: most of the operator's work in a burst of new jobs
    created = plan_reconcile(make(), Observed(jobs=[], pods=[]), NOW)
    tj = make(status=created.status.model_dump(by_alias=True, exclude_none=True, mode="json"))
    starting = [
        [],
        [pod(1, 0, phase="Pending")],
        [pod(1, 0, phase="Pending"), pod(1, 1, phase="Pending")],
        [
            pod(1, 0),
            pod(
                1,
                1,
                phase="Pending",
                containerStatuses=[{"state": {"waiting": {"reason": "ContainerCreating"}}}],
            ),
        ],
    ]
    for pods in starting:
        plan = plan_reconcile(tj, Observed(jobs=[job(1)], pods=pods), NOW)
        assert plan.status == created.status, pods
    assert cond(created, "Running").message == "waiting for 2 pods of attempt 1"


def test_failure_records_next_attempt_then_tears_down_and_backs_off() -> None:
    tj = make(status={"attempt": 1, "phase": "Running", "restarts": 0, "observedGeneration": 1})
    plan = plan_reconcile(
        tj, Observed(jobs=[job(1, "Failed")], pods=[pod(1, 0, "Failed", 1), pod(1, 1)]), NOW
    )
    assert plan.status.attempt == 2
    assert plan.status.restarts == 1
    assert plan.status.phase == "Restarting"
    assert plan.status.last_failure is not None and plan.status.last_failure.cause == "UserError"
    assert (ActionKind.DELETE_JOB, "tj-1") in kinds(plan)
    assert (ActionKind.CREATE_JOB, "tj-2") not in kinds(plan)
    assert plan.requeue_after == 10
    assert "attempt 1 failed" in cond(plan, "Restarting").message
    assert plan.restart is not None and plan.restart.charged


def test_next_attempt_waits_for_backoff_and_old_job_to_go() -> None:
    status = {
        "attempt": 2,
        "phase": "Restarting",
        "restarts": 1,
        "observedGeneration": 1,
        "lastFailure": {"cause": "UserError", "attempt": 1, "time": NOW.isoformat()},
    }
    early = plan_reconcile(make(status=status), Observed(jobs=[], pods=[]), NOW + timedelta(seconds=3))
    assert ActionKind.CREATE_JOB not in [a.kind for a in early.actions]
    assert early.requeue_after == pytest.approx(7)
    lingering = plan_reconcile(
        make(status=status), Observed(jobs=[job(1)], pods=[]), NOW + timedelta(seconds=30)
    )
    assert (ActionKind.DELETE_JOB, "tj-1") in kinds(lingering)
    assert ActionKind.CREATE_JOB not in [a.kind for a in lingering.actions]
    ready = plan_reconcile(make(status=status), Observed(jobs=[], pods=[]), NOW + timedelta(seconds=30))
    assert (ActionKind.CREATE_JOB, "tj-2") in kinds(ready)


def test_budget_spent_fails_with_reason() -> None:
    tj = make(status={"attempt": 3, "phase": "Running", "restarts": 2, "observedGeneration": 1})
    plan = plan_reconcile(tj, Observed(jobs=[job(3, "Failed")], pods=[pod(3, 1, "Failed", 1)]), NOW)
    assert plan.status.phase == "Failed"
    failed = cond(plan, "Failed")
    assert failed.reason == "RestartBudgetExhausted"
    assert "2 of spec.failurePolicy.maxRestarts 2" in failed.message
    assert (ActionKind.DELETE_JOB, "tj-3") in kinds(plan)


def test_config_error_fails_at_once_without_restarting() -> None:
    tj = make(status={"attempt": 1, "phase": "Running", "restarts": 0, "observedGeneration": 1})
    plan = plan_reconcile(tj, Observed(jobs=[job(1, "Failed")], pods=[pod(1, 0, "Failed", 2)]), NOW)
    assert plan.status.phase == "Failed"
    assert cond(plan, "Failed").reason == "NonRetryableError"
    assert plan.status.restarts == 0


def test_preemption_is_not_charged() -> None:
    tj = make(
        status={"attempt": 1, "phase": "Running", "restarts": 0, "observedGeneration": 1},
        failurePolicy={"maxRestarts": 0},
    )
    preempted = pod(
        1,
        0,
        "Failed",
        137,
        conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}],
    )
    plan = plan_reconcile(tj, Observed(jobs=[job(1, "Failed")], pods=[preempted]), NOW)
    assert plan.status.phase == "Restarting"
    assert plan.status.restarts == 0 and plan.status.uncounted_restarts == 1


def test_fail_rule_for_exit_codes() -> None:
    rules = [
        {"cause": "UserError", "exitCodes": [42], "action": "Fail"},
        {"cause": "UserError", "action": "Restart"},
    ]
    tj = make(
        status={"attempt": 1, "phase": "Running", "observedGeneration": 1},
        failurePolicy={"maxRestarts": 5, "rules": rules},
    )
    fatal = plan_reconcile(tj, Observed(jobs=[job(1, "Failed")], pods=[pod(1, 0, "Failed", 42)]), NOW)
    assert fatal.status.phase == "Failed"
    retry = plan_reconcile(tj, Observed(jobs=[job(1, "Failed")], pods=[pod(1, 0, "Failed", 1)]), NOW)
    assert retry.status.phase == "Restarting"


def test_success_reads_the_exported_model_from_rank0_termination_message() -> None:
    tj = make(
        status={"attempt": 1, "phase": "Running", "observedGeneration": 1}, serving={"modelService": "digits"}
    )
    rank0 = pod(1, 0, "Succeeded")
    rank0["status"]["containerStatuses"] = [
        {
            "state": {
                "terminated": {
                    "exitCode": 0,
                    "message": '{"exportedModel": {"uri": "/models/tj/v3", "modelName": "tj", "version": "v3"}, "finalStep": 10}',
                }
            }
        }
    ]
    plan = plan_reconcile(tj, Observed(jobs=[job(1, "Complete")], pods=[rank0, pod(1, 1, "Succeeded")]), NOW)
    assert plan.status.phase == "Succeeded"
    assert plan.status.exported_model is not None and plan.status.exported_model.version == "v3"
    assert (ActionKind.HANDOFF, "digits") in kinds(plan)
    assert (ActionKind.DELETE_JOB, "tj-1") in kinds(plan), "pods are cleaned up on finish by default"


def test_success_shows_rank0_final_progress_from_its_termination_message() -> None:
    # The only pull was before training started (step 0, no total): the demo printed `step 0/?`.
    early = {"step": 0, "totalSteps": 0, "epoch": 0, "state": "starting"}
    tj = make(status={"attempt": 1, "phase": "Running", "observedGeneration": 1, "progress": early})
    final = {"step": 120, "totalSteps": 120, "epoch": 19, "trainLoss": 0.031, "evalMetric": 0.97}
    rank0 = pod(1, 0, "Succeeded")
    rank0["status"]["containerStatuses"] = [
        {
            "state": {
                "terminated": {"exitCode": 0, "message": json.dumps({"finalStep": 120, "progress": final})}
            }
        }
    ]
    plan = plan_reconcile(tj, Observed(jobs=[job(1, "Complete")], pods=[rank0, pod(1, 1, "Succeeded")]), NOW)
    progress = plan.status.progress
    assert progress is not None
    assert (progress.step, progress.total_steps, progress.epoch) == (120, 120, 19)
    assert (progress.train_loss, progress.eval_metric, progress.percent) == (0.031, 0.97, 100.0)


def test_finished_job_is_deleted_after_its_ttl() -> None:
    done = {"attempt": 1, "phase": "Succeeded", "completionTime": NOW.isoformat(), "observedGeneration": 1}
    early = plan_reconcile(
        make(status=done, ttlSecondsAfterFinished=60), Observed(jobs=[], pods=[]), NOW + timedelta(seconds=10)
    )
    assert early.requeue_after == pytest.approx(50)
    late = plan_reconcile(
        make(status=done, ttlSecondsAfterFinished=60), Observed(jobs=[], pods=[]), NOW + timedelta(seconds=61)
    )
    assert (ActionKind.DELETE_TRAININGJOB, "") in kinds(late)


def test_suspend_and_resume() -> None:
    running = {"attempt": 1, "phase": "Running", "observedGeneration": 1}
    plan = plan_reconcile(make(status=running, suspend=True), Observed(jobs=[job(1)], pods=[pod(1, 0)]), NOW)
    assert plan.status.phase == "Suspended"
    assert (ActionKind.SUSPEND_JOB, "tj-1") in kinds(plan)
    resumed = plan_reconcile(
        make(status=plan.status.to_dict()), Observed(jobs=[job(1, suspend=True)], pods=[]), NOW
    )
    assert (ActionKind.RESUME_JOB, "tj-1") in kinds(resumed)
    assert cond(resumed, "Suspended").status == "False"


def test_deadline_counts_from_start() -> None:
    st = {"attempt": 1, "phase": "Running", "startTime": NOW.isoformat(), "observedGeneration": 1}
    plan = plan_reconcile(
        make(status=st, activeDeadlineSeconds=60),
        Observed(jobs=[job(1)], pods=[]),
        NOW + timedelta(seconds=61),
    )
    assert plan.status.phase == "Failed"
    assert cond(plan, "Failed").reason == "DeadlineExceeded"


def test_stalled_without_steps_restarts_when_asked() -> None:
    st = {
        "attempt": 1,
        "phase": "Running",
        "observedGeneration": 1,
        "progress": {"step": 5, "lastUpdateTime": NOW.isoformat()},
        "conditions": [
            {
                "type": "Running",
                "status": "True",
                "reason": "PodsRunning",
                "lastTransitionTime": NOW.isoformat(),
            }
        ],
    }
    tj = make(status=st, stall={"timeoutSeconds": 60, "restart": True})
    plan = plan_reconcile(
        tj,
        Observed(jobs=[job(1)], pods=[pod(1, 0), pod(1, 1)], progress={"step": 5}),
        NOW + timedelta(seconds=90),
    )
    assert any(e.reason == "NoProgress" for e in plan.events)
    assert plan.status.phase == "Restarting"
    assert plan.status.last_failure is not None and plan.status.last_failure.cause == "Stalled"
    assert plan.status.progress is not None and plan.status.progress.last_update_time is None, (
        "new gang, new clock"
    )


def test_stalled_condition_without_restart() -> None:
    st = {
        "attempt": 1,
        "phase": "Running",
        "observedGeneration": 1,
        "progress": {"step": 5, "lastUpdateTime": NOW.isoformat()},
    }
    plan = plan_reconcile(
        make(status=st, stall={"timeoutSeconds": 60}),
        Observed(jobs=[job(1)], pods=[pod(1, 0), pod(1, 1)], progress={"step": 5}),
        NOW + timedelta(seconds=90),
    )
    stalled = cond(plan, "Stalled")
    assert stalled.status == "True" and "no training step for 90 s" in stalled.message
    assert plan.status.phase == "Running"


def test_progress_merges_and_keeps_last_step_time() -> None:
    st = {"attempt": 1, "phase": "Running", "observedGeneration": 1}
    fresh = {
        "step": 10,
        "totalSteps": 100,
        "percent": 10.0,
        "trainLoss": 0.5,
        "etaSeconds": 90,
        "state": "training",
    }
    plan = plan_reconcile(
        make(status=st), Observed(jobs=[job(1)], pods=[pod(1, 0), pod(1, 1)], progress=fresh), NOW
    )
    assert plan.status.progress is not None
    assert plan.status.progress.step == 10 and plan.status.progress.last_update_time == NOW


def test_backoff_doubles_and_caps() -> None:
    tj = make()
    assert [backoff_seconds(tj, n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_last_checkpoint_comes_from_rank0_progress() -> None:
    st = {"attempt": 1, "phase": "Running", "observedGeneration": 1}
    fresh = {
        "step": 100,
        "lastCheckpoint": {
            "step": 100,
            "path": "/var/lib/coxswain/checkpoints/step-100.pt",
            "time": NOW.isoformat(),
        },
    }
    plan = plan_reconcile(
        make(status=st), Observed(jobs=[job(1)], pods=[pod(1, 0), pod(1, 1)], progress=fresh), NOW
    )
    assert plan.status.last_checkpoint is not None and plan.status.last_checkpoint.step == 100
    later = plan_reconcile(
        make(status=plan.status.to_dict()),
        Observed(jobs=[job(1)], pods=[pod(1, 0), pod(1, 1)], progress={"step": 120}),
        NOW,
    )
    assert later.status.last_checkpoint is not None and later.status.last_checkpoint.step == 100


def test_pods_torn_down_by_a_suspend_are_not_a_gang_failure() -> None:
    st = {
        "attempt": 1,
        "phase": "Suspended",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Suspended",
                "status": "True",
                "reason": "JobSuspended",
                "lastTransitionTime": NOW.isoformat(),
            }
        ],
    }
    killed = pod(1, 0, "Failed", 137)
    killed["metadata"]["deletionTimestamp"] = NOW.isoformat()
    plan = plan_reconcile(make(status=st), Observed(jobs=[job(1, suspend=True)], pods=[killed]), NOW)
    assert plan.status.phase != "Restarting"
    assert plan.status.attempt == 1
    assert (ActionKind.RESUME_JOB, "tj-1") in kinds(plan)


def test_a_job_failed_only_by_torn_down_pods_restarts_without_charge() -> None:
    st = {"attempt": 1, "phase": "Running", "restarts": 0, "observedGeneration": 1}
    killed = pod(1, 0, "Failed", 137)
    killed["metadata"]["deletionTimestamp"] = NOW.isoformat()
    plan = plan_reconcile(
        make(status=st, failurePolicy={"maxRestarts": 0}),
        Observed(jobs=[job(1, "Failed")], pods=[killed]),
        NOW,
    )
    assert plan.status.phase == "Restarting"
    assert plan.status.restarts == 0 and plan.status.uncounted_restarts == 1
    assert plan.status.last_failure is not None and plan.status.last_failure.cause == "Interrupted"


# -- issue 15 and 16 ------------------------------------------------------------------------


def test_a_spec_the_policy_refuses_fails_and_makes_nothing() -> None:
    from coxswain.tenancy import Refusal

    refusals = (Refusal("spec.image", "image evil/x is not allowed here"),)
    plan = plan_reconcile(make(), Observed(jobs=[], pods=[], refusals=refusals), NOW)
    assert plan.status.phase == "Failed"
    failed = cond(plan, "Failed")
    assert failed.reason == "PolicyRefused" and "spec.image" in failed.message
    assert not [a for a in plan.actions if a.kind != ActionKind.DELETE_JOB]


def test_a_claim_per_job_is_made_before_the_job_that_mounts_it() -> None:
    from coxswain.trainingjob.checkpoints import checkpoint_storage

    tj = make(nodes=1)
    storage = checkpoint_storage(tj, "local-path", claim_exists=False)
    plan = plan_reconcile(tj, Observed(jobs=[], pods=[], checkpoint=storage), NOW)
    order = [a.kind for a in plan.actions]
    assert order.index(ActionKind.ENSURE_CHECKPOINT_CLAIM) < order.index(ActionKind.CREATE_JOB)
    assert plan.checkpoint_claim == "tj-checkpoints"
    assert cond(plan, "CheckpointsDurable").status == "True"
    assert not [e for e in plan.events if e.reason == "CheckpointsNotDurable"]


def test_checkpoints_that_cannot_survive_a_restart_are_a_condition_and_one_event() -> None:
    from coxswain.trainingjob.checkpoints import checkpoint_storage

    tj = make(nodes=1)
    storage = checkpoint_storage(tj, None, claim_exists=False)
    plan = plan_reconcile(tj, Observed(jobs=[], pods=[], checkpoint=storage), NOW)
    durable = cond(plan, "CheckpointsDurable")
    assert durable.status == "False" and durable.reason == "NoStorageClass"
    assert [e.reason for e in plan.events].count("CheckpointsNotDurable") == 1
    assert ActionKind.ENSURE_CHECKPOINT_CLAIM not in [a.kind for a in plan.actions]
    again = plan_reconcile(
        tj.model_copy(update={"status": plan.status}), Observed(jobs=[], pods=[], checkpoint=storage), NOW
    )
    assert "CheckpointsNotDurable" not in [e.reason for e in again.events], "warned once, not every pass"


def test_status_names_the_step_the_attempt_resumed_from_and_forgets_it_on_restart() -> None:
    tj = make(status={"attempt": 2, "phase": "Running", "restarts": 1, "observedGeneration": 1})
    progress = {"step": 450, "totalSteps": 1000, "resumedFromStep": 400, "state": "training"}
    plan = plan_reconcile(tj, Observed(jobs=[job(2)], pods=[pod(2, 0), pod(2, 1)], progress=progress), NOW)
    assert plan.status.resumed_from_step == 400
    failed = make(status=plan.status.to_dict())
    restart = plan_reconcile(failed, Observed(jobs=[job(2, "Failed")], pods=[pod(2, 0, "Failed", 1)]), NOW)
    assert restart.status.attempt == 3 and restart.status.resumed_from_step is None


def test_the_attempt_after_the_last_allowed_one_fails_the_job() -> None:
    from coxswain.api.trainingjob import MAX_ATTEMPTS

    tj = make(
        status={"attempt": MAX_ATTEMPTS, "phase": "Running", "restarts": 0, "observedGeneration": 1},
        failurePolicy={"maxRestarts": 1000},
    )
    plan = plan_reconcile(tj, Observed(jobs=[job(MAX_ATTEMPTS, "Failed")], pods=[]), NOW)
    failed = cond(plan, "Failed")
    assert failed.reason == "AttemptLimitReached" and "63 characters" in failed.message
    assert plan.status.attempt == MAX_ATTEMPTS
