"""How pods on kwok nodes end: the coxswain.dev/kwok-exit annotation (see
operator/coxswain/devcluster/kwok_stages.yaml), deletion, and nodes kwok must not touch."""

from __future__ import annotations

import time
from typing import Any

import pytest
from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Node, Pod

from cluster_fixtures import SETTLE, ClusterHandle, wait_for
from coxswain.devcluster.kwok_nodes import (
    EXIT_CODE_ANNOTATION,
    EXIT_DELAY_ANNOTATION,
    EXIT_REASON_ANNOTATION,
    KWOK_NODE_SELECTOR,
)

pytestmark = pytest.mark.cluster


def job_pod(
    name: str, annotations: dict[str, str] | None = None, node_name: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "registry.invalid/none:1"}],
    }
    if node_name:
        spec["nodeName"] = node_name
    else:
        spec["nodeSelector"] = KWOK_NODE_SELECTOR  # the shared cluster may hold node-agent Nodes
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }


def finished(cluster: ClusterHandle, namespace: str, name: str) -> Pod:
    return wait_for(
        lambda: (
            (p := cluster.client.get(Pod, name, namespace=namespace)).status.phase in ("Succeeded", "Failed")
            and p
        ),
        SETTLE,
        f"{name} to finish",
    )


def test_pod_runs_until_asked_then_succeeds(cluster: ClusterHandle, namespace: str) -> None:
    client = cluster.client
    client.create(from_dict(job_pod("ok")), namespace=namespace)
    wait_for(lambda: client.get(Pod, "ok", namespace=namespace).status.phase == "Running", SETTLE, "Running")
    client.patch(Pod, "ok", {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "0"}}}, namespace=namespace)
    pod = finished(cluster, namespace, "ok")
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.containerStatuses[0].state.terminated
    assert (terminated.exitCode, terminated.reason) == (0, "Completed")


@pytest.mark.parametrize(
    ("code", "reason", "expected_reason"),
    [("1", None, "Error"), ("137", "OOMKilled", "OOMKilled"), ("143", None, "Error")],
)
def test_pod_asked_to_fail_ends_failed_with_its_exit_code(
    cluster: ClusterHandle, namespace: str, code: str, reason: str | None, expected_reason: str
) -> None:
    annotations = {EXIT_CODE_ANNOTATION: code}
    if reason:
        annotations[EXIT_REASON_ANNOTATION] = reason
    cluster.client.create(from_dict(job_pod("bad", annotations)), namespace=namespace)
    pod = finished(cluster, namespace, "bad")
    assert pod.status.phase == "Failed"
    terminated = pod.status.containerStatuses[0].state.terminated
    assert terminated.exitCode == int(code)
    assert terminated.reason == expected_reason


def test_exit_delay_keeps_the_pod_running_first(cluster: ClusterHandle, namespace: str) -> None:
    client = cluster.client
    annotations = {EXIT_CODE_ANNOTATION: "3", EXIT_DELAY_ANNOTATION: "3s"}
    client.create(from_dict(job_pod("later", annotations)), namespace=namespace)
    wait_for(
        lambda: client.get(Pod, "later", namespace=namespace).status.phase == "Running", SETTLE, "Running"
    )
    pod = finished(cluster, namespace, "later")
    terminated = pod.status.containerStatuses[0].state.terminated
    assert terminated.exitCode == 3
    assert (terminated.finishedAt - terminated.startedAt).total_seconds() >= 2


def test_failed_job_pod_fails_the_job_with_backoff_limit_zero(cluster: ClusterHandle, namespace: str) -> None:
    client = cluster.client
    client.create(
        from_dict(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "once"},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "metadata": {"annotations": {EXIT_CODE_ANNOTATION: "2"}},
                        "spec": {
                            "restartPolicy": "Never",
                            "nodeSelector": KWOK_NODE_SELECTOR,
                            "containers": [{"name": "main", "image": "registry.invalid/none:1"}],
                        },
                    },
                },
            }
        ),
        namespace=namespace,
    )
    job = wait_for(
        lambda: (
            (j := client.get(Job, "once", namespace=namespace)).status.failed == 1
            and any(c.type == "Failed" and c.status == "True" for c in j.status.conditions or [])
            and j
        ),
        SETTLE,
        "Job Failed",
    )
    assert job.status.succeeded in (None, 0)


def test_deleted_running_pod_is_removed(cluster: ClusterHandle, namespace: str) -> None:
    client = cluster.client
    client.create(from_dict(job_pod("gone")), namespace=namespace)
    wait_for(
        lambda: client.get(Pod, "gone", namespace=namespace).status.phase == "Running", SETTLE, "Running"
    )
    client.delete(Pod, "gone", namespace=namespace)
    wait_for(
        lambda: not [p for p in client.list(Pod, namespace=namespace) if p.metadata.name == "gone"],
        SETTLE,
        "removal",
    )


def test_kwok_leaves_nodes_without_the_fake_annotation_alone(cluster: ClusterHandle, namespace: str) -> None:
    """The node agent of issue 8 registers real Nodes; kwok must neither mark them Ready nor
    run their pods."""
    client = cluster.client
    name = f"agent-{namespace}"
    client.create(Node(metadata=ObjectMeta(name=name, labels={"coxswain.dev/node-pool": "agent-test"})))
    try:
        client.create(from_dict(job_pod("on-agent", node_name=name)), namespace=namespace)
        # A kwok-managed pod is Running within a second; give kwok several.
        time.sleep(3)
        pod = client.get(Pod, "on-agent", namespace=namespace)
        assert pod.status.phase == "Pending"
        assert not pod.status.podIP
        node = client.get(Node, name)
        assert not any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
    finally:
        # Nothing would ever finish this pod's graceful deletion: remove it at once.
        client.delete(Pod, "on-agent", namespace=namespace, grace_period=0)
        client.delete(Node, name)
