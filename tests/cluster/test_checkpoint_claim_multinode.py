"""Checkpoint storage of a multi-node gang (issue 16), real apiserver and operator on kwok nodes.

One Indexed Job pod template serves every node rank, so the operator cannot give its claim to
the node-rank-0 pod alone: with `spec.checkpoint.accessMode: ReadWriteMany` every pod mounts a
ReadWriteMany claim; without it the gang runs on an emptyDir and `CheckpointsDurable=False`
says so. kwok has no provisioner: the test's StorageClass has none and the test makes the
ReadWriteMany volume the real PV controller binds the claim to."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod
from test_operator_hardening import pods_of, trainingjob, wait_condition

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.kube import TRAININGJOB_RESOURCE
from operator_fixtures import OperatorProcess

pytestmark = pytest.mark.cluster

SHARED_CLASS = "coxswain-test-rwx"


@pytest.fixture
def shared_volume(cluster: ClusterHandle, op_namespace: str) -> Iterator[str]:
    """A StorageClass with no provisioner and one ReadWriteMany volume of it (not a default)."""
    pv = f"rwx-{op_namespace}"
    for obj in (
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": SHARED_CLASS},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Retain",
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": SHARED_CLASS,
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/tmp/{pv}"},
            },
        },
    ):
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(obj))
    yield pv
    cluster.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def n_pods(cluster: ClusterHandle, ns: str, job: str, n: int) -> list[Pod] | None:
    pods = pods_of(cluster, ns, job)
    return pods if len(pods) == n else None


def test_read_write_many_claim_is_mounted_by_every_pod_of_a_multi_node_gang(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str, shared_volume: str
) -> None:
    ns = op_namespace
    spec = {"nodes": 3, "checkpoint": {"storageClassName": SHARED_CLASS, "accessMode": "ReadWriteMany"}}
    cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("gang", **spec)), namespace=ns)
    cond = wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "gang", "CheckpointsDurable", "True")
    assert cond["reason"] == "ClaimPerJob" and "all 3 pods" in cond["message"], cond

    def bound() -> PersistentVolumeClaim | None:
        c = cluster.client.get(PersistentVolumeClaim, "gang-checkpoints", namespace=ns)
        return c if c.status is not None and c.status.phase == "Bound" else None

    claim = wait_for(bound, 60, "the ReadWriteMany claim bound")
    assert claim.spec is not None and claim.spec.accessModes == ["ReadWriteMany"]
    assert claim.spec.volumeName == shared_volume
    pods = wait_for(lambda: n_pods(cluster, ns, "gang", 3), 60, "3 pods")
    for pod in pods:
        assert pod.spec is not None and pod.spec.volumes is not None
        volume = next(v for v in pod.spec.volumes if v.name == "checkpoints")
        assert volume.persistentVolumeClaim is not None
        assert volume.persistentVolumeClaim.claimName == "gang-checkpoints"


def test_multi_node_gang_without_read_write_many_runs_on_empty_dir_and_says_so(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("pair", nodes=2)), namespace=ns)
    cond = wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "pair", "CheckpointsDurable", "False")
    assert cond["reason"] == "EmptyDirVolume" and "accessMode" in cond["message"], cond
    pods = wait_for(lambda: n_pods(cluster, ns, "pair", 2), 60, "2 pods")
    for pod in pods:
        assert pod.spec is not None and pod.spec.volumes is not None
        volume = next(v for v in pod.spec.volumes if v.name == "checkpoints")
        assert volume.emptyDir is not None and volume.persistentVolumeClaim is None
    assert not list(cluster.client.list(PersistentVolumeClaim, namespace=ns))
