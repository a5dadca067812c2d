"""Failure causes are told apart so the budget is charged for the right thing."""

from __future__ import annotations

from typing import Any

import pytest

from coxswain.trainingjob.failures import FailureCause, classify_pod_failure, root_cause

pytestmark = pytest.mark.unit


def pod(
    name: str,
    exit_code: int | None,
    reason: str = "Error",
    finished: str = "2026-01-01T00:00:10Z",
    **extra: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Failed"}
    if exit_code is not None:
        status["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": finished}},
            }
        ]
    status.update(extra.pop("status", {}))
    return {"metadata": {"name": name, **extra}, "status": status}


def test_running_pod_is_not_a_failure() -> None:
    assert classify_pod_failure({"metadata": {"name": "p"}, "status": {"phase": "Running"}}) is None


def test_user_code_exit_code() -> None:
    f = classify_pod_failure(pod("p", 1))
    assert f is not None and f.cause == FailureCause.USER_ERROR and f.exit_code == 1 and not f.follower


def test_oom_killed() -> None:
    f = classify_pod_failure(pod("p", 137, reason="OOMKilled"))
    assert f is not None and f.cause == FailureCause.OOM_KILLED
    assert "spec.resources.memory" in f.message


def test_config_error_is_its_own_cause() -> None:
    f = classify_pod_failure(pod("p", 2))
    assert f is not None and f.cause == FailureCause.CONFIG_ERROR


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        ("PreemptionByScheduler", FailureCause.PREEMPTED),
        ("EvictionByEvictionAPI", FailureCause.EVICTED),
        ("DeletionByPodGC", FailureCause.NODE_LOST),
        ("DeletionByTaintManager", FailureCause.NODE_LOST),
    ],
)
def test_disruption_target_reasons(reason: str, cause: FailureCause) -> None:
    f = classify_pod_failure(
        pod(
            "p",
            137,
            status={"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": reason}]},
        )
    )
    assert f is not None and f.cause == cause


def test_kubelet_eviction() -> None:
    f = classify_pod_failure(pod("p", None, status={"reason": "Evicted", "message": "low on memory"}))
    assert f is not None and f.cause == FailureCause.EVICTED


def test_root_cause_skips_peers_that_exited_because_a_rank_died() -> None:
    pods = [
        pod("rank0", 3, finished="2026-01-01T00:00:05Z"),  # peer died -> exit 3, even if earlier
        pod("rank1", 1, finished="2026-01-01T00:00:07Z"),
        pod("rank2", 137, finished="2026-01-01T00:00:09Z", deletionTimestamp="2026-01-01T00:00:08Z"),
    ]
    f = root_cause(pods)
    assert f is not None and f.pod == "rank1"


def test_root_cause_prefers_infrastructure_over_the_user_error_it_caused() -> None:
    pods = [
        pod("a", 1, finished="2026-01-01T00:00:01Z"),
        pod(
            "b",
            137,
            status={
                "conditions": [
                    {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
                ]
            },
        ),
    ]
    f = root_cause(pods)
    assert f is not None and f.cause == FailureCause.PREEMPTED


def test_a_pod_deleted_by_teardown_is_a_follower_whatever_its_exit_code() -> None:
    f = classify_pod_failure(pod("p", 1, deletionTimestamp="2026-01-01T00:00:08Z"))
    assert f is not None and f.follower
