"""The TrainingJob controller on the real API server, kwok nodes and a real operator process."""

from __future__ import annotations

import time
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Pod, Service
from lightkube.types import PatchType

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.kwok_nodes import EXIT_CODE_ANNOTATION, EXIT_REASON_ANNOTATION
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.trainingjob import naming
from operator_fixtures import OperatorProcess

pytestmark = pytest.mark.cluster

SELECTOR = naming.LABEL_TRAININGJOB


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task": {"builtin": {"model": "mlp", "dataset": "digits"}},
        "nodes": 2,
        "resources": {"cpu": "1", "memory": "1Gi"},
        "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 1, "maxBackoffSeconds": 2},
    }
    base.update(spec)
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": base,
    }


def create(cluster: ClusterHandle, ns: str, obj: dict[str, Any]) -> None:
    cluster.client.create(TRAININGJOB_RESOURCE(obj), namespace=ns)


def status(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.client.get(TRAININGJOB_RESOURCE, name, namespace=ns).get("status") or {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), None)


def pods(cluster: ClusterHandle, ns: str, name: str, attempt: int | None = None) -> list[Pod]:
    labels: dict[str, Any] = {SELECTOR: name}
    if attempt is not None:
        labels[naming.LABEL_ATTEMPT] = str(attempt)
    return list(cluster.client.list(Pod, namespace=ns, labels=labels))


def jobs(cluster: ClusterHandle, ns: str, name: str) -> list[Job]:
    return list(cluster.client.list(Job, namespace=ns, labels={SELECTOR: name}))


def running_pods(cluster: ClusterHandle, ns: str, name: str, attempt: int, count: int) -> list[Pod]:
    def probe() -> list[Pod] | None:
        found = [p for p in pods(cluster, ns, name, attempt) if p.status and p.status.phase == "Running"]
        return found if len(found) == count else None

    return wait_for(probe, 60, f"{count} running pods of {name} attempt {attempt}")


def end_pod(cluster: ClusterHandle, ns: str, pod: Pod, code: int, reason: str | None = None) -> None:
    annotations = {EXIT_CODE_ANNOTATION: str(code)}
    if reason:
        annotations[EXIT_REASON_ANNOTATION] = reason
    assert pod.metadata is not None and pod.metadata.name is not None
    cluster.client.patch(Pod, pod.metadata.name, {"metadata": {"annotations": annotations}}, namespace=ns)


def wait_phase(cluster: ClusterHandle, ns: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: st if (st := status(cluster, ns, name)).get("phase") == phase else None,
        timeout,
        f"{name} phase {phase}",
    )


def test_create_makes_service_job_and_pods_with_torchrun_env(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, trainingjob("gang", nodes=2, procsPerNode=2, resources={"cpu": "2", "memory": "1Gi"}))
    running = running_pods(cluster, ns, "gang", 1, 2)
    st = wait_phase(cluster, ns, "gang", "Running")
    assert st["attempt"] == 1
    assert condition(st, "Running")["status"] == "True"  # type: ignore[index]

    svc = cluster.client.get(Service, "gang", namespace=ns)
    assert svc.spec is not None and svc.spec.clusterIP == "None" and svc.spec.publishNotReadyAddresses
    cluster.client.get(ConfigMap, "gang-config", namespace=ns)
    (job,) = jobs(cluster, ns, "gang")
    assert job.spec is not None and job.spec.completionMode == "Indexed" and job.spec.backoffLimit == 0
    assert job.metadata is not None and job.metadata.ownerReferences is not None
    assert job.metadata.ownerReferences[0].kind == "TrainingJob"

    pod = next(
        p
        for p in running
        if p.metadata and p.metadata.labels and p.metadata.labels.get(naming.LABEL_COMPLETION_INDEX) == "1"
    )
    assert pod.spec is not None
    assert pod.spec.automountServiceAccountToken is False
    assert pod.spec.hostname == "gang-1-1" and pod.spec.subdomain == "gang"
    (container,) = pod.spec.containers
    env = {e.name: e.value for e in container.env or []}
    assert env["PET_NNODES"] == "2"
    assert env["PET_NPROC_PER_NODE"] == "2"
    assert env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"] == "gang-1-0.gang:29400"
    assert env["MASTER_ADDR"] == "gang-1-0.gang"
    assert env["WORLD_SIZE"] == "4"
    assert env["OMP_NUM_THREADS"] == "1"
    assert "NCCL_DEBUG" not in env
    assert container.resources is not None and container.resources.limits == {"cpu": "2", "memory": "1Gi"}
    assert container.securityContext is not None and container.securityContext.readOnlyRootFilesystem
    assert container.securityContext.capabilities is not None
    assert container.securityContext.capabilities.drop == ["ALL"]


def test_gpu_job_lands_on_gpu_nodes_only(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, trainingjob("gpu", nodes=2, resources={"gpus": 2, "cpu": "1", "memory": "1Gi"}))
    running = running_pods(cluster, ns, "gpu", 1, 2)
    for pod in running:
        assert (
            pod.spec is not None
            and pod.spec.nodeName is not None
            and pod.spec.nodeName.startswith("kwok-gpu-")
        )
        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        assert env["NCCL_DEBUG"] == "WARN" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"  # type: ignore[union-attr]


def test_too_few_gpus_stays_pending_with_the_schedulers_reason(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, trainingjob("huge", nodes=1, resources={"gpus": 8, "cpu": "1", "memory": "1Gi"}))

    def unschedulable() -> dict[str, Any] | None:
        st = status(cluster, ns, "huge")
        running = condition(st, "Running")
        return st if running and "nvidia.com/gpu" in running.get("message", "") else None

    st = wait_for(unschedulable, 60, "a Running=False condition naming nvidia.com/gpu")
    assert st["phase"] == "Pending"
    message = condition(st, "Running")["message"]  # type: ignore[index]
    assert "cannot be scheduled" in message and "Insufficient nvidia.com/gpu" in message


def test_failed_pod_restarts_whole_gang_then_budget_spent_fails(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(
        cluster,
        ns,
        trainingjob(
            "flaky", nodes=2, failurePolicy={"maxRestarts": 1, "backoffSeconds": 1, "maxBackoffSeconds": 2}
        ),
    )
    first = running_pods(cluster, ns, "flaky", 1, 2)
    end_pod(cluster, ns, first[0], 1)

    second = running_pods(cluster, ns, "flaky", 2, 2)
    st = status(cluster, ns, "flaky")
    assert st["attempt"] == 2 and st["restarts"] == 1
    assert st["lastFailure"]["cause"] == "UserError" and st["lastFailure"]["attempt"] == 1
    # The whole first gang is gone: no member of attempt 1 is left running beside attempt 2.
    wait_for(lambda: not pods(cluster, ns, "flaky", 1) or None, 60, "attempt 1 pods deleted")
    assert [j.metadata.name for j in jobs(cluster, ns, "flaky") if j.metadata] == ["flaky-2"]

    end_pod(cluster, ns, second[1], 1)
    st = wait_phase(cluster, ns, "flaky", "Failed")
    failed = condition(st, "Failed")
    assert failed is not None and failed["reason"] == "RestartBudgetExhausted"
    assert "maxRestarts 1" in failed["message"]
    wait_for(lambda: not jobs(cluster, ns, "flaky") or None, 60, "Jobs cleaned up after failure")
    metrics = operator.metrics()
    assert 'coxswain_trainingjobs_restarts_total{cause="UserError",charged="true"}' in metrics
    assert 'coxswain_trainingjobs_failed_total{reason="RestartBudgetExhausted"}' in metrics


def test_oom_with_no_budget_left_fails_naming_the_cause(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(
        cluster,
        ns,
        trainingjob(
            "oom", nodes=1, failurePolicy={"maxRestarts": 0, "backoffSeconds": 1, "maxBackoffSeconds": 1}
        ),
    )
    (pod,) = running_pods(cluster, ns, "oom", 1, 1)
    end_pod(cluster, ns, pod, 137, reason="OOMKilled")
    st = wait_phase(cluster, ns, "oom", "Failed")
    failed = condition(st, "Failed")
    assert failed is not None and failed["reason"] == "RestartBudgetExhausted"
    assert "OOMKilled" in failed["message"] and "spec.resources.memory" in failed["message"]


def test_eviction_restarts_without_charging_the_budget(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(
        cluster,
        ns,
        trainingjob(
            "evicted", nodes=2, failurePolicy={"maxRestarts": 0, "backoffSeconds": 1, "maxBackoffSeconds": 1}
        ),
    )
    first = running_pods(cluster, ns, "evicted", 1, 2)
    assert first[0].metadata is not None and first[0].metadata.name is not None
    eviction = Pod.Eviction(metadata=ObjectMeta(name=first[0].metadata.name, namespace=ns))
    cluster.client.create(eviction, name=first[0].metadata.name, namespace=ns)
    running_pods(cluster, ns, "evicted", 2, 2)
    st = wait_phase(cluster, ns, "evicted", "Running")
    assert st["restarts"] == 0 and st["uncountedRestarts"] == 1
    assert st["lastFailure"]["cause"] == "Evicted"


def test_succeeded_job_cleans_pods_and_ttl_deletes_it(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, trainingjob("done", nodes=2, ttlSecondsAfterFinished=3))
    for pod in running_pods(cluster, ns, "done", 1, 2):
        end_pod(cluster, ns, pod, 0)
    st = wait_phase(cluster, ns, "done", "Succeeded")
    assert condition(st, "Succeeded")["status"] == "True"  # type: ignore[index]
    assert st.get("completionTime")

    def gone() -> bool:
        try:
            cluster.client.get(TRAININGJOB_RESOURCE, "done", namespace=ns)
        except ApiError as exc:
            return exc.status.code == 404
        return False

    wait_for(gone, 60, "TrainingJob deleted by its TTL")
    wait_for(lambda: not pods(cluster, ns, "done") or None, 60, "pods garbage-collected")


def test_suspend_removes_pods_and_resume_brings_them_back(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, trainingjob("pausable", nodes=2))
    running_pods(cluster, ns, "pausable", 1, 2)
    cluster.client.patch(
        TRAININGJOB_RESOURCE,
        "pausable",
        {"spec": {"suspend": True}},
        namespace=ns,
        patch_type=PatchType.MERGE,
    )
    st = wait_phase(cluster, ns, "pausable", "Suspended")
    assert condition(st, "Suspended")["status"] == "True"  # type: ignore[index]
    wait_for(lambda: not pods(cluster, ns, "pausable") or None, 60, "pods gone while suspended")
    assert st["attempt"] == 1

    cluster.client.patch(
        TRAININGJOB_RESOURCE,
        "pausable",
        {"spec": {"suspend": False}},
        namespace=ns,
        patch_type=PatchType.MERGE,
    )
    running_pods(cluster, ns, "pausable", 1, 2)
    st = wait_phase(cluster, ns, "pausable", "Running")
    assert condition(st, "Suspended")["status"] == "False"  # type: ignore[index]
    assert st["restarts"] == 0


def test_created_suspended_waits_for_admission(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, trainingjob("queued", nodes=1, suspend=True))
    wait_phase(cluster, ns, "queued", "Suspended")
    time.sleep(2)
    assert not pods(cluster, ns, "queued")
    cluster.client.patch(
        TRAININGJOB_RESOURCE, "queued", {"spec": {"suspend": False}}, namespace=ns, patch_type=PatchType.MERGE
    )
    running_pods(cluster, ns, "queued", 1, 1)


def test_active_deadline_fails_the_job(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, trainingjob("slow", nodes=1, activeDeadlineSeconds=3))
    running_pods(cluster, ns, "slow", 1, 1)
    st = wait_phase(cluster, ns, "slow", "Failed", timeout=60)
    assert condition(st, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]
    wait_for(lambda: not pods(cluster, ns, "slow") or None, 60, "pods removed after the deadline")


def test_deleting_the_trainingjob_removes_everything(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, trainingjob("doomed", nodes=2))
    running_pods(cluster, ns, "doomed", 1, 2)
    cluster.client.delete(TRAININGJOB_RESOURCE, "doomed", namespace=ns)
    wait_for(lambda: not jobs(cluster, ns, "doomed") or None, 60, "Jobs garbage-collected")
    wait_for(lambda: not pods(cluster, ns, "doomed") or None, 60, "pods garbage-collected")
    wait_for(
        lambda: not list(cluster.client.list(Service, namespace=ns, labels={SELECTOR: "doomed"})) or None,
        60,
        "Service gone",
    )
    wait_for(
        lambda: not list(cluster.client.list(ConfigMap, namespace=ns, labels={SELECTOR: "doomed"})) or None,
        60,
        "ConfigMap gone",
    )


def test_operator_killed_mid_restart_leaves_no_duplicates_or_orphans(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(
        cluster,
        ns,
        trainingjob(
            "tough", nodes=2, failurePolicy={"maxRestarts": 3, "backoffSeconds": 2, "maxBackoffSeconds": 4}
        ),
    )
    first = running_pods(cluster, ns, "tough", 1, 2)
    end_pod(cluster, ns, first[0], 1)
    # Kill the operator in the middle of the restart: after it recorded attempt 2, during back-off.
    wait_for(lambda: status(cluster, ns, "tough").get("attempt") == 2 or None, 60, "attempt 2 recorded")
    operator.kill9()
    operator.start()
    running_pods(cluster, ns, "tough", 2, 2)
    st = wait_phase(cluster, ns, "tough", "Running")
    assert st["restarts"] == 1, "the restart was charged once, not again by the second operator"
    names = sorted(j.metadata.name for j in jobs(cluster, ns, "tough") if j.metadata)
    assert names == ["tough-2"]
    wait_for(lambda: not pods(cluster, ns, "tough", 1) or None, 60, "no orphaned pod of attempt 1")
    assert len(pods(cluster, ns, "tough")) == 2
