"""kube-scheduler against kwok nodes: GPU requests land on GPU nodes, impossible ones wait
with the scheduler's reason."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Node, Pod

from cluster_fixtures import SETTLE, ClusterHandle, wait_for
from coxswain.devcluster.kwok_nodes import GPU_RESOURCE, KWOK_NODE_SELECTOR, NODE_POOL_LABEL

pytestmark = pytest.mark.cluster


def pod(name: str, gpus: int = 0, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod kept to kwok nodes: the shared cluster may also hold node-agent Nodes."""
    resources = {GPU_RESOURCE: str(gpus)} if gpus else {}
    spec: dict[str, Any] = {
        "containers": [
            {"name": "main", "image": "registry.invalid/none:1", "resources": {"limits": resources}}
        ]
    }
    spec["nodeSelector"] = {**KWOK_NODE_SELECTOR, **(node_selector or {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"test": "sched"}},
        "spec": spec,
    }


def kwok_nodes(cluster: ClusterHandle) -> list[Node]:
    return list(cluster.client.list(Node, labels=KWOK_NODE_SELECTOR))  # type: ignore[arg-type]


def gpu_nodes(cluster: ClusterHandle) -> set[str]:
    return {
        n.metadata.name
        for n in kwok_nodes(cluster)
        if int((n.status.allocatable or {}).get(GPU_RESOURCE, "0")) > 0
    }


def test_gpu_pods_land_only_on_gpu_nodes(cluster: ClusterHandle, namespace: str) -> None:
    client = cluster.client
    with_gpus = gpu_nodes(cluster)
    assert with_gpus, "the cluster has no GPU nodes"
    for n in kwok_nodes(cluster):
        if n.metadata.name in with_gpus:
            labels = n.metadata.labels
            assert labels["nvidia.com/gpu.present"] == "true"
            assert labels["nvidia.com/gpu.count"] == n.status.allocatable[GPU_RESOURCE]
            assert labels[NODE_POOL_LABEL] == "gpu"
    # Without GPU accounting the scheduler would spread these four over all nodes, CPU ones too.
    names = [f"gpu-{i}" for i in range(4)]
    for name in names:
        client.create(from_dict(pod(name, gpus=1)), namespace=namespace)
    bound = wait_for(
        lambda: (
            (ps := [client.get(Pod, n, namespace=namespace) for n in names])
            and all(p.status.phase == "Running" for p in ps)
            and ps
        ),
        SETTLE,
        "4 GPU pods Running",
    )
    for p in bound:
        assert p.spec.nodeName in with_gpus, f"{p.metadata.name} landed on {p.spec.nodeName}, not a GPU node"


def test_pod_selecting_gpu_labels_lands_on_gpu_node(cluster: ClusterHandle, namespace: str) -> None:
    client = cluster.client
    client.create(
        from_dict(pod("by-label", node_selector={"nvidia.com/gpu.present": "true"})), namespace=namespace
    )
    running = wait_for(
        lambda: (p := client.get(Pod, "by-label", namespace=namespace)).status.phase == "Running" and p,
        SETTLE,
        "Running",
    )
    assert running.spec.nodeName in gpu_nodes(cluster)


def test_pod_asking_more_gpus_than_any_node_has_stays_pending_with_reason(
    cluster: ClusterHandle, namespace: str
) -> None:
    client = cluster.client
    most = max(int(n.status.allocatable.get(GPU_RESOURCE, "0")) for n in kwok_nodes(cluster))
    client.create(from_dict(pod("too-big", gpus=most * 2)), namespace=namespace)

    def unschedulable() -> Any:
        p = client.get(Pod, "too-big", namespace=namespace)
        for c in (p.status.conditions or []) if p.status else []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                return p, c
        return None

    p, condition = wait_for(unschedulable, SETTLE, "PodScheduled=False/Unschedulable")
    assert p.status.phase == "Pending"
    assert p.spec.nodeName is None
    assert f"Insufficient {GPU_RESOURCE}" in condition.message
    assert "nodes are available" in condition.message
