"""Kueue preemption on the real node (issue 18): a low-priority TrainingJob, queued on the
`real-node` ResourceFlavor and admitted, is preempted by a high-priority one; its pods get
SIGTERM and rank 0 checkpoints; once Kueue admits it again, the new pods start at that
checkpoint's step, not at 0, from the operator's default checkpoint claim.

Prints the steps lost per preemption (the eviction's last step minus the resumed first step;
at most `checkpoint.intervalSteps`, 0 when the SIGTERM checkpoint is written)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod
from realnode_training import (  # noqa: F401 (fixtures)
    PodLog,
    durable_trainer_image,
)

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster import DevCluster
from coxswain.devcluster.kueue import ClusterQueue
from coxswain.devcluster.realnode import REAL_NODE_LABEL
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.trainingjob import naming
from kueue_objects import ensure_priority_class, local_queue
from operator_fixtures import OperatorProcess

pytestmark = pytest.mark.realnode

LOW, HIGH = "coxswain-test-low", "coxswain-test-high"
INTERVAL = 40


@pytest.fixture(scope="module")
def real_kueue(real_cluster: ClusterHandle, real_dev: DevCluster) -> ClusterHandle:
    """The real-node cluster with Kueue added (kept until the cluster goes down)."""
    real_dev.up(gpu_nodes=0, cpu_nodes=0, real_nodes=1, kueue=True, timeout=300)
    return real_cluster


@pytest.fixture
def real_queue(real_kueue: ClusterHandle, real_op_namespace: str) -> Iterator[str]:
    """LocalQueue `q` on a ClusterQueue with the real node's 2 CPUs on flavor `real-node`."""
    name = f"cq-{uuid.uuid4().hex[:8]}"
    real_kueue.client.create(
        ClusterQueue(
            metadata=ObjectMeta(name=name),
            spec={
                "namespaceSelector": {},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory"],
                        "flavors": [
                            {
                                "name": "real-node",
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "2"},
                                    {"name": "memory", "nominalQuota": "8Gi"},
                                ],
                            }
                        ],
                    }
                ],
            },
        )
    )
    real_kueue.client.create(local_queue("q", real_op_namespace, name))
    yield "q"
    real_kueue.client.delete(ClusterQueue, name)


def queued_job(image: str, name: str, priority: str) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "queueName": "q",
            "priorityClassName": priority,
            "task": {
                "builtin": {"model": "cnn", "dataset": "digits", "channels": [8, 16], "hiddenSizes": [32]}
            },
            "nodes": 1,
            "procsPerNode": 2,
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            # Most of the quota: the two jobs cannot both be admitted.
            "resources": {"cpu": "1800m", "memory": "2Gi"},
            "optimization": {"batchSize": 128, "epochs": 60},
            "checkpoint": {"intervalSteps": INTERVAL, "keep": 2},
        },
    }


def running_pod(cluster: ClusterHandle, ns: str, name: str, not_: str = "") -> str | None:
    """A Running pod of TrainingJob `name` that is not being deleted and is not `not_`."""
    for pod in cluster.client.list(Pod, namespace=ns, labels={naming.LABEL_TRAININGJOB: name}):
        meta, st = pod.metadata, pod.status
        if meta and st and st.phase == "Running" and not meta.deletionTimestamp and meta.name != not_:
            return str(meta.name)
    return None


def test_preempted_trainingjob_resumes_from_the_checkpoint_written_at_eviction(
    real_kueue: ClusterHandle,
    durable_trainer_image: str,  # noqa: F811
    real_host_operator: OperatorProcess,
    real_op_namespace: str,
    real_queue: str,
) -> None:
    client, ns = real_kueue.client, real_op_namespace
    ensure_priority_class(client, LOW, 100)
    ensure_priority_class(client, HIGH, 1000)

    def status(name: str) -> dict[str, Any]:
        return dict(client.get(TRAININGJOB_RESOURCE, name, namespace=ns).get("status") or {})

    def queued_reason(name: str) -> str | None:
        conds = status(name).get("conditions") or []
        return next((c["reason"] for c in conds if c["type"] == "Queued"), None)

    client.create(TRAININGJOB_RESOURCE(queued_job(durable_trainer_image, "low", LOW)), namespace=ns)  # type: ignore[call-overload]
    pod1 = wait_for(lambda: running_pod(real_kueue, ns, "low"), 300, "low's pod Running")
    log1 = PodLog.follow(real_kueue, ns, pod1)
    try:
        wait_for(lambda: log1.events("checkpoint_saved", rank=0), 600, "low's first checkpoint")
        client.create(TRAININGJOB_RESOURCE(queued_job(durable_trainer_image, "high", HIGH)), namespace=ns)  # type: ignore[call-overload]
        wait_for(
            lambda: status("low").get("phase") == "Queued" and queued_reason("low") == "Preempted",
            120,
            "low Queued/Preempted",
        )
    finally:
        log1.close(120)
    stopped = log1.events("stopped_by_signal", rank=0)
    assert stopped, f"rank 0 did not stop on SIGTERM: {log1.events('checkpoint_saved')}"
    evicted_at = int(stopped[-1]["step"])
    st = status("low")
    assert st["phase"] != "Failed" and st["preemptions"] == 1 and (st.get("restarts") or 0) == 0, st

    wait_for(lambda: status("high").get("phase") == "Running", 300, "high Running")
    client.delete(TRAININGJOB_RESOURCE, "high", namespace=ns)

    pod2 = wait_for(lambda: running_pod(real_kueue, ns, "low", not_=pod1), 300, "low re-admitted and Running")
    log2 = PodLog.follow(real_kueue, ns, pod2)
    try:
        started = wait_for(lambda: log2.events("training_started", rank=0), 600, "low's resumed first step")[
            0
        ]
    finally:
        client.delete(TRAININGJOB_RESOURCE, "low", namespace=ns)
        log2.close(120)
    resumed = int(started["step"])
    lost = evicted_at - resumed
    print(
        f"\nsteps lost per preemption: {lost} (evicted at step {evicted_at}, resumed at {resumed}, "
        f"checkpoint interval {INTERVAL})"
    )
    assert resumed > 0, "the re-admitted attempt started from scratch"
    assert 0 <= lost <= INTERVAL
