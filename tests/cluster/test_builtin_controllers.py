"""The real controllers of the local cluster: Deployment, ReplicaSet, Indexed Job, garbage
collection; pods run on kwok nodes."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube import ApiError
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Node, Pod

from cluster_fixtures import SETTLE, ClusterHandle, wait_for
from coxswain.devcluster.kwok_nodes import EXIT_CODE_ANNOTATION, FAKE_NODE_ANNOTATION, KWOK_NODE_SELECTOR

pytestmark = pytest.mark.cluster

# Pods here carry KWOK_NODE_SELECTOR: the shared cluster may also hold node-agent Nodes.

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def container(name: str = "main", **resources: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "image": "registry.invalid/none:1"}
    if resources:
        spec["resources"] = {"limits": resources, "requests": resources}
    return spec


def pods_of(cluster: ClusterHandle, namespace: str, **labels: str) -> list[Pod]:
    return list(cluster.client.list(Pod, namespace=namespace, labels=labels))  # type: ignore[arg-type]


def test_deployment_makes_replicaset_and_pods_running_on_kwok_nodes(
    cluster: ClusterHandle, namespace: str
) -> None:
    client = cluster.client
    client.create(
        from_dict(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"nodeSelector": KWOK_NODE_SELECTOR, "containers": [container()]},
                    },
                },
            }
        ),
        namespace=namespace,
    )
    replicasets = wait_for(lambda: list(client.list(ReplicaSet, namespace=namespace)), SETTLE, "a ReplicaSet")
    assert replicasets[0].metadata.ownerReferences[0].kind == "Deployment"
    running = wait_for(
        lambda: (
            (p := pods_of(cluster, namespace, app="web"))
            and len(p) == 3
            and all(x.status.phase == "Running" for x in p)
            and p
        ),
        SETTLE,
        "3 Running pods",
    )
    fake_nodes = {
        n.metadata.name
        for n in client.list(Node)
        if (n.metadata.annotations or {}).get(FAKE_NODE_ANNOTATION) == "fake"
    }
    for pod in running:
        assert pod.metadata.ownerReferences[0].kind == "ReplicaSet"
        assert pod.spec.nodeName in fake_nodes
        assert pod.status.podIP
    wait_for(
        lambda: (d := client.get(Deployment, "web", namespace=namespace)).status.readyReplicas == 3 and d,
        SETTLE,
        "Deployment ready 3/3",
    )


def indexed_job(name: str, completions: int, **resources: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": completions,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": KWOK_NODE_SELECTOR,
                    "containers": [container(**resources)],
                }
            },
        },
    }


def test_indexed_job_makes_one_pod_per_completion_index_and_completes(
    cluster: ClusterHandle, namespace: str
) -> None:
    client = cluster.client
    client.create(from_dict(indexed_job("gang", 3)), namespace=namespace)
    pods = wait_for(
        lambda: (
            (p := pods_of(cluster, namespace, **{"job-name": "gang"}))
            and len(p) == 3
            and all(x.status.phase == "Running" for x in p)
            and p
        ),
        SETTLE,
        "3 Running Job pods",
    )
    indexes = sorted(int(p.metadata.annotations[COMPLETION_INDEX]) for p in pods)
    assert indexes == [0, 1, 2]
    for pod in pods:
        # The index is also in the hostname, which a headless Service turns into a stable DNS name.
        assert pod.spec.hostname == f"gang-{pod.metadata.annotations[COMPLETION_INDEX]}"
        client.patch(
            Pod,
            pod.metadata.name,
            {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "0"}}},
            namespace=namespace,
        )

    # The Job controller counts the pods first (SuccessCriteriaMet) and sets Complete once their
    # tracking finalizers are gone, so wait for the condition, not for the count.
    def complete() -> Job | None:
        job = client.get(Job, "gang", namespace=namespace)
        conditions = job.status.conditions or []
        return job if any(c.type == "Complete" and c.status == "True" for c in conditions) else None

    job = wait_for(complete, SETTLE, "the Job to be Complete")
    assert job.status.succeeded == 3
    assert job.status.completedIndexes == "0-2"


def test_deleting_an_owner_garbage_collects_its_children(cluster: ClusterHandle, namespace: str) -> None:
    client = cluster.client
    client.create(
        from_dict(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "owner"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "owner"}},
                    "template": {
                        "metadata": {"labels": {"app": "owner"}},
                        "spec": {"nodeSelector": KWOK_NODE_SELECTOR, "containers": [container()]},
                    },
                },
            }
        ),
        namespace=namespace,
    )
    wait_for(lambda: len(pods_of(cluster, namespace, app="owner")) == 2, SETTLE, "2 pods")
    # Also an arbitrary object owned by another, as the operator's children will be.
    parent = client.create(
        from_dict({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "parent"}}),
        namespace=namespace,
    )
    owner_ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "parent",
        "uid": parent.metadata.uid,
        "controller": True,
    }
    client.create(
        from_dict(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "child", "ownerReferences": [owner_ref]},
            }
        ),
        namespace=namespace,
    )

    client.delete(Deployment, "owner", namespace=namespace)  # background propagation, the default
    client.delete(ConfigMap, "parent", namespace=namespace)

    wait_for(
        lambda: not list(client.list(ReplicaSet, namespace=namespace)), 60, "the ReplicaSet to be collected"
    )
    wait_for(lambda: not pods_of(cluster, namespace, app="owner"), 60, "the pods to be collected")

    def child_gone() -> bool:
        try:
            client.get(ConfigMap, "child", namespace=namespace)
        except ApiError as e:
            return e.status.code == 404
        return False

    wait_for(child_gone, 60, "the owned ConfigMap to be collected")
