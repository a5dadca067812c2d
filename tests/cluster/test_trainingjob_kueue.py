"""TrainingJobs queued in a real Kueue (the local cluster's, kwok GPU nodes) and a real operator:
admitted all-or-nothing against quota, preempted into Queued (never Failed, never charged),
resumed when capacity returns, and cleaned up with their Job and Workload."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.resources.batch_v1 import Job
from test_trainingjob_controller import condition, create, end_pod, pods, running_pods, status, trainingjob

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.kueue import ClusterQueue
from coxswain.kube import TRAININGJOB_RESOURCE
from kueue_objects import (
    Workload,
    cluster_queue,
    ensure_priority_class,
    local_queue,
    workload_of_job,
)
from operator_fixtures import OperatorProcess

pytestmark = pytest.mark.cluster

LOW, HIGH = "coxswain-test-low", "coxswain-test-high"


@pytest.fixture(scope="module")
def kueue_operator(kueue: ClusterHandle, operator: OperatorProcess) -> OperatorProcess:
    """The operator, started after Kueue's CRDs exist (either order works; this one is quicker)."""
    return operator


@pytest.fixture
def gpu_queue(kueue: ClusterHandle, op_namespace: str) -> Iterator[str]:
    """LocalQueue `q` in the test's namespace, on a ClusterQueue of its own with 4 GPUs."""
    name = f"cq-{uuid.uuid4().hex[:8]}"
    kueue.client.create(cluster_queue(name, gpus=4))
    kueue.client.create(local_queue("q", op_namespace, name))
    yield "q"
    kueue.client.delete(ClusterQueue, name)


def queued_tj(name: str, gpus: int = 1, **spec: Any) -> dict[str, Any]:
    return trainingjob(
        name, nodes=2, queueName="q", resources={"gpus": gpus, "cpu": "1", "memory": "1Gi"}, **spec
    )


def phase_with(cluster: ClusterHandle, ns: str, name: str, phase: str, reason: str | None = None) -> Any:
    def probe() -> dict[str, Any] | None:
        st = status(cluster, ns, name)
        if st.get("phase") != phase:
            return None
        queued = condition(st, "Queued")
        return st if reason is None or (queued and queued["reason"] == reason) else None

    return wait_for(probe, 90, f"{name} phase {phase}" + (f" reason {reason}" if reason else ""))


def test_quota_runs_two_gangs_and_queues_the_third_until_one_finishes(
    kueue: ClusterHandle, kueue_operator: OperatorProcess, op_namespace: str, gpu_queue: str
) -> None:
    ns = op_namespace
    for name in ("a", "b", "c"):
        create(kueue, ns, queued_tj(name))

    def two_running() -> list[str] | None:
        phases = {n: status(kueue, ns, n).get("phase") for n in ("a", "b", "c")}
        running = sorted(n for n, p in phases.items() if p == "Running")
        return running if len(running) == 2 and "Queued" in phases.values() else None

    running = wait_for(two_running, 120, "two TrainingJobs Running and one Queued")
    (third,) = {"a", "b", "c"} - set(running)
    st = phase_with(kueue, ns, third, "Queued", "Inadmissible")
    queued = condition(st, "Queued")
    assert queued is not None and "LocalQueue q" in queued["message"]
    assert "nvidia.com/gpu" in queued["message"], f"Kueue's own reason: {queued['message']}"
    assert pods(kueue, ns, third) == [], "a queued gang has no pod at all"

    for pod in running_pods(kueue, ns, running[0], 1, 2):
        end_pod(kueue, ns, pod, 0)
    phase_with(kueue, ns, running[0], "Succeeded")
    st = phase_with(kueue, ns, third, "Running")
    assert condition(st, "Queued")["reason"] == "Admitted"  # type: ignore[index]
    assert len(running_pods(kueue, ns, third, 1, 2)) == 2


def test_high_priority_preempts_low_which_is_queued_uncharged_and_resumes(
    kueue: ClusterHandle, kueue_operator: OperatorProcess, op_namespace: str, gpu_queue: str
) -> None:
    ns = op_namespace
    ensure_priority_class(kueue.client, LOW, 100)
    ensure_priority_class(kueue.client, HIGH, 1000)
    create(kueue, ns, queued_tj("low", gpus=2, priorityClassName=LOW))
    running_pods(kueue, ns, "low", 1, 2)
    phase_with(kueue, ns, "low", "Running")

    create(kueue, ns, queued_tj("high", gpus=2, priorityClassName=HIGH))
    st = phase_with(kueue, ns, "low", "Queued", "Preempted")
    assert st["phase"] != "Failed"
    assert st["preemptions"] == 1
    assert (st["restarts"], st["uncountedRestarts"], st["attempt"]) == (0, 0, 1), "never charged"
    message = condition(st, "Queued")["message"]  # type: ignore[index]
    assert "Preempted" in message, f"Kueue's eviction message: {message}"
    wait_for(lambda: not pods(kueue, ns, "low") or None, 60, "the preempted gang's pods gone")
    phase_with(kueue, ns, "high", "Running")
    assert pods(kueue, ns, "low") == [], "no pod of a Queued job exists"

    # Capacity returns: Kueue admits the same Job again and the gang resumes.
    kueue.client.delete(TRAININGJOB_RESOURCE, "high", namespace=ns)
    st = phase_with(kueue, ns, "low", "Running")
    assert "resuming from the last checkpoint" in condition(st, "Queued")["message"]  # type: ignore[index]
    # The Job controller may fail the evicted Job (its pod failure policy sees the killed pods'
    # exit codes): then the next attempt was queued instead. Either way nothing is charged.
    assert (st["restarts"], st["uncountedRestarts"], st["preemptions"]) == (0, 0, 1)
    assert len(running_pods(kueue, ns, "low", st["attempt"], 2)) == 2


def test_deleting_a_queued_trainingjob_removes_its_job_and_workload(
    kueue: ClusterHandle, kueue_operator: OperatorProcess, op_namespace: str, gpu_queue: str
) -> None:
    ns = op_namespace
    create(kueue, ns, queued_tj("big", gpus=4))  # 8 GPUs: more than the quota, never admitted
    phase_with(kueue, ns, "big", "Queued", "Inadmissible")
    wait_for(lambda: workload_of_job(kueue.client, ns, "big-1"), 60, "Kueue's Workload for big-1")
    assert pods(kueue, ns, "big") == []

    kueue.client.delete(TRAININGJOB_RESOURCE, "big", namespace=ns)

    def gone() -> bool:
        try:
            kueue.client.get(Job, "big-1", namespace=ns)
        except ApiError as exc:
            return exc.status.code == 404
        return False

    wait_for(gone, 60, "the queued Job garbage-collected")
    wait_for(
        lambda: not list(kueue.client.list(Workload, namespace=ns)) or None,
        60,
        "the Workload garbage-collected",
    )
