"""Issue 15 and 16 on the real API server, kwok nodes and a real operator process.

Each test reproduces one finding (it failed on the code before the fix) and shows the fix:
no adoption of others' objects, trust by ownerReference not labels, the tenancy policy,
the restricted Pod Security Standard, and a checkpoint claim per TrainingJob.

PVC binding on kwok-only clusters is simulated honestly: a StorageClass with no
provisioner (`kubernetes.io/no-provisioner`, Immediate binding) and a PersistentVolume made
by the test; the real PersistentVolume controller binds the claim to it, and the real
scheduler places the pod only once it is bound. Nothing is written to the volume: the
trainer's resume on a real volume is tested on the real node.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import (
    ConfigMap,
    Event,
    Namespace,
    PersistentVolumeClaim,
    Pod,
    Service,
)
from lightkube.resources.storage_v1 import StorageClass
from lightkube.types import PatchType
from test_modelservice_controller import finish_training

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.kwok_nodes import KWOK_NODE_SELECTOR
from coxswain.kube import MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE
from operator_fixtures import OperatorProcess

pytestmark = pytest.mark.cluster

DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task": {"builtin": {"model": "mlp", "dataset": "digits"}},
        "resources": {"cpu": "1", "memory": "1Gi"},
        "nodeSelector": KWOK_NODE_SELECTOR,
        **spec,
    }
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": base,
    }


def modelservice(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": "pvc://models/digits"},
        "repository": {"hostPath": {"path": "/var/lib/coxswain/models"}},
        "resources": {"cpu": "500m", "memory": "512Mi"},
        "versions": {"stable": "v1"},
        "nodeSelector": KWOK_NODE_SELECTOR,
        **spec,
    }
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": base,
    }


def get(cluster: ClusterHandle, resource: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.client.get(resource, name, namespace=ns))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def wait_condition(
    cluster: ClusterHandle, resource: Any, ns: str, name: str, type_: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        c = condition(get(cluster, resource, ns, name), type_)
        return c if c.get("status") == status else None

    return wait_for(probe, timeout, f"{name}: {type_}={status}")


def pods_of(cluster: ClusterHandle, ns: str, job: str) -> list[Pod]:
    return list(cluster.client.list(Pod, namespace=ns, labels={"coxswain.dev/trainingjob": job}))


# -- no adoption of others' objects --------------------------------------------------------


def test_a_foreign_service_named_like_the_modelservice_is_not_taken_over(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "payments"},
        "spec": {"selector": {"app": "payments"}, "ports": [{"port": 443}]},
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(foreign))
    cluster.client.create(MODELSERVICE_RESOURCE(modelservice("payments")), namespace=ns)
    cond = wait_condition(cluster, MODELSERVICE_RESOURCE, ns, "payments", "NameConflict", "True")
    assert "Service payments" in cond["message"]
    svc = cluster.client.get(Service, "payments", namespace=ns)
    assert svc.spec is not None and svc.spec.selector == {"app": "payments"}, "selector rewritten"
    assert svc.metadata is not None and not svc.metadata.ownerReferences, "adopted by the ModelService"


def test_a_foreign_config_map_named_like_the_jobs_is_not_taken_over(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    cluster.client.create(
        ConfigMap(metadata=ObjectMeta(name="report-config"), data={"owner": "someone else"}), namespace=ns
    )
    cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("report")), namespace=ns)
    cond = wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "report", "NameConflict", "True")
    assert "ConfigMap report-config" in cond["message"]
    cm = cluster.client.get(ConfigMap, "report-config", namespace=ns)
    assert cm.data == {"owner": "someone else"}
    assert cm.metadata is not None and not cm.metadata.ownerReferences
    with pytest.raises(ApiError):
        cluster.client.get(Job, "report-1", namespace=ns)


# -- trust by ownerReference, not labels ---------------------------------------------------


def _fail_pod(cluster: ClusterHandle, ns: str, name: str) -> None:
    terminated = {
        "exitCode": 1,
        "reason": "Error",
        "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": "2026-01-01T00:00:01Z",
    }
    container = {
        "name": "trainer",
        "image": "ghcr.io/coxswain-dev/trainer:0.1.0",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": {"terminated": terminated},
    }
    cluster.client.patch(
        Pod.Status,
        name,
        {"status": {"phase": "Failed", "containerStatuses": [container]}},
        namespace=ns,
        patch_type=PatchType.STRATEGIC,
    )


def test_a_pod_that_only_wears_our_labels_cannot_fail_the_gang(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("solo")), namespace=ns)
    wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "solo", "Running", "True")
    forged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "solo-1-0-forged",
            "labels": {
                "coxswain.dev/trainingjob": "solo",
                "coxswain.dev/attempt": "1",
                "batch.kubernetes.io/job-completion-index": "0",
            },
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
        },
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": KWOK_NODE_SELECTOR,
            "containers": [{"name": "trainer", "image": "ghcr.io/coxswain-dev/trainer:0.1.0"}],
        },
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(forged))
    wait_for(
        lambda: (
            (p := cluster.client.get(Pod, "solo-1-0-forged", namespace=ns)).status
            and p.status.phase == "Running"
        ),
        60,
        "the forged pod running",
    )
    _fail_pod(cluster, ns, "solo-1-0-forged")
    # Suspending is something the operator does only when it still owns the gang's state:
    # a pass after the forged failure must see attempt 1, not a restart.
    cluster.client.patch(
        TRAININGJOB_RESOURCE, "solo", {"spec": {"suspend": True}}, namespace=ns, patch_type=PatchType.MERGE
    )
    wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "solo", "Suspended", "True")
    status = get(cluster, TRAININGJOB_RESOURCE, ns, "solo")["status"]
    assert status["attempt"] == 1 and status.get("restarts", 0) == 0, status
    assert not status.get("lastFailure"), status


# -- tenancy policy ------------------------------------------------------------------------


def test_a_trainingjob_asking_for_what_the_policy_refuses_fails_naming_the_fields(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    spec = {
        "image": "evil.example/miner:1",
        "export": {
            "repository": {"hostPath": {"path": "/etc"}},
            "encryption": {"keySecretRef": {"name": "db-password", "key": "p"}},
        },
    }
    cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("greedy", **spec)), namespace=ns)
    cond = wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "greedy", "Failed", "True")
    assert cond["reason"] == "PolicyRefused"
    for field in ("spec.image", "spec.export.repository.hostPath", "spec.export.encryption.keySecretRef"):
        assert field in cond["message"]
    with pytest.raises(ApiError):
        cluster.client.get(Job, "greedy-1", namespace=ns)


def test_a_modelservice_asking_for_what_the_policy_refuses_is_not_ready_and_makes_nothing(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    spec = {
        "repository": {"hostPath": {"path": "/var/lib/kubelet"}},
        "authTokenSecretRef": {"name": "db-password", "key": "p"},
    }
    cluster.client.create(MODELSERVICE_RESOURCE(modelservice("greedy", **spec)), namespace=ns)
    cond = wait_for(
        lambda: (
            c
            if (c := condition(get(cluster, MODELSERVICE_RESOURCE, ns, "greedy"), "Ready")).get("reason")
            == "PolicyRefused"
            else None
        ),
        60,
        "Ready=False PolicyRefused",
    )
    assert cond["status"] == "False"
    assert "spec.repository.hostPath" in cond["message"] and "spec.authTokenSecretRef" in cond["message"]
    with pytest.raises(ApiError):
        cluster.client.get(Deployment, "greedy", namespace=ns)
    # Fixed spec: it proceeds.
    allowed = {"repository": {"hostPath": {"path": "/var/lib/coxswain/models"}}, "authTokenSecretRef": None}
    cluster.client.patch(
        MODELSERVICE_RESOURCE, "greedy", {"spec": allowed}, namespace=ns, patch_type=PatchType.MERGE
    )
    wait_for(lambda: cluster.client.get(Deployment, "greedy", namespace=ns), 60, "the Deployment")


def test_the_handoff_changes_only_a_modelservice_that_names_the_trainingjob(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    cluster.client.create(MODELSERVICE_RESOURCE(modelservice("victim")), namespace=ns)
    serving = {"modelService": "victim", "rollout": "stable"}
    export = {"repository": {"hostPath": {"path": "/var/lib/coxswain/models"}}, "modelName": "digits"}
    cluster.client.create(
        TRAININGJOB_RESOURCE(trainingjob("intruder", serving=serving, export=export)), namespace=ns
    )
    finish_training(cluster, ns, "intruder", "v9")

    def refused() -> bool:
        events = cluster.client.list(Event, namespace=ns, fields={"involvedObject.name": "intruder"})
        return any(e.reason == "HandoffRefused" for e in events)

    wait_for(refused, 60, "a HandoffRefused event")
    assert get(cluster, MODELSERVICE_RESOURCE, ns, "victim")["spec"]["versions"] == {"stable": "v1"}


# -- the restricted Pod Security Standard --------------------------------------------------


@pytest.fixture
def restricted_namespace(cluster: ClusterHandle, op_namespace: str) -> str:
    cluster.client.patch(
        Namespace,
        op_namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    return op_namespace


def test_operator_made_pods_pass_the_restricted_pod_security_standard(
    cluster: ClusterHandle, operator: OperatorProcess, restricted_namespace: str
) -> None:
    ns = restricted_namespace
    cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("strict", nodes=2)), namespace=ns)
    # Another name: a TrainingJob's headless Service and a ModelService's Service are both
    # named after their owner (the same name would be a NameConflict).
    pvc_less = modelservice("strict-serving", repository={"persistentVolumeClaim": {"claimName": "models"}})
    cluster.client.create(MODELSERVICE_RESOURCE(pvc_less), namespace=ns)
    wait_for(lambda: len(pods_of(cluster, ns, "strict")) == 2, 60, "both training pods admitted")
    wait_for(
        lambda: list(
            cluster.client.list(Pod, namespace=ns, labels={"coxswain.dev/modelservice": "strict-serving"})
        ),
        60,
        "a server pod admitted",
    )


def test_a_spec_the_namespaces_pod_security_refuses_says_so(
    cluster: ClusterHandle, operator: OperatorProcess, restricted_namespace: str
) -> None:
    ns = restricted_namespace
    export = {"repository": {"hostPath": {"path": "/var/lib/coxswain/models"}}}
    cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("hosty", export=export)), namespace=ns)
    cond = wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "hosty", "Failed", "True")
    assert cond["reason"] == "PolicyRefused"
    assert "spec.export.repository.hostPath" in cond["message"] and "restricted" in cond["message"]


# -- a checkpoint claim per TrainingJob (issue 16) -----------------------------------------


@pytest.fixture
def default_storage_class(cluster: ClusterHandle) -> Iterator[str]:
    """A default class with no provisioner, and a volume for the claim to bind to."""
    name = "coxswain-test-default"
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": name, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "Immediate",
                "reclaimPolicy": "Retain",
            }
        ),
    )
    yield name
    cluster.kubectl("delete", "storageclass", name, "--ignore-not-found", check=False)


def _volume(cluster: ClusterHandle, name: str, storage_class: str) -> None:
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": storage_class,
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": f"/tmp/{name}"},
                },
            }
        ),
    )


def test_a_default_trainingjob_gets_a_bound_checkpoint_claim_that_goes_with_it(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str, default_storage_class: str
) -> None:
    ns = op_namespace
    pv = f"ckpt-{ns}"
    _volume(cluster, pv, default_storage_class)
    try:
        # The class is named: whether the operator's watch has seen the new default class
        # before the job's first pass is a race (the default-class choice is unit-tested).
        spec = {"checkpoint": {"storageClassName": default_storage_class}}
        cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("durable", **spec)), namespace=ns)
        cond = wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "durable", "CheckpointsDurable", "True")
        assert "durable-checkpoints" in cond["message"]
        claim = wait_for(
            lambda: (
                c
                if (
                    c := cluster.client.get(PersistentVolumeClaim, "durable-checkpoints", namespace=ns)
                ).status
                and c.status.phase == "Bound"
                else None
            ),
            60,
            "the claim bound to the test's volume",
        )
        assert claim.spec is not None and claim.spec.volumeName == pv
        assert claim.metadata is not None and claim.metadata.ownerReferences
        assert claim.metadata.ownerReferences[0].kind == "TrainingJob"
        (pod,) = wait_for(lambda: pods_of(cluster, ns, "durable"), 60, "the training pod")
        assert pod.spec is not None and pod.spec.volumes is not None
        volumes = {v.name: v for v in pod.spec.volumes}
        assert volumes["checkpoints"].persistentVolumeClaim is not None
        assert volumes["checkpoints"].persistentVolumeClaim.claimName == "durable-checkpoints"
        wait_for(
            lambda: (
                (p := cluster.client.get(Pod, pod.metadata.name, namespace=ns)).status  # type: ignore[union-attr]
                and p.status.phase == "Running"
            ),
            60,
            "the pod scheduled with its claim bound",
        )
        cluster.client.delete(TRAININGJOB_RESOURCE, "durable", namespace=ns)

        def claim_gone() -> bool:
            try:
                cluster.client.get(PersistentVolumeClaim, "durable-checkpoints", namespace=ns)
            except ApiError as exc:
                return exc.status.code == 404
            return False

        wait_for(claim_gone, 90, "the claim deleted with the TrainingJob")
    finally:
        cluster.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def test_without_a_default_storage_class_the_job_runs_and_says_checkpoints_are_not_durable(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    defaults = [
        sc
        for sc in cluster.client.list(StorageClass)
        if sc.metadata and (sc.metadata.annotations or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"
    ]
    if defaults:
        pytest.skip("this cluster has a default StorageClass (a real node's)")
    cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("fragile")), namespace=ns)
    cond = wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "fragile", "CheckpointsDurable", "False")
    assert cond["reason"] == "NoStorageClass" and "storageClassName" in cond["message"]
    wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "fragile", "Running", "True")

    def warned() -> bool:
        events = cluster.client.list(Event, namespace=ns, fields={"involvedObject.name": "fragile"})
        return any(e.reason == "CheckpointsNotDurable" for e in events)

    wait_for(warned, 30, "a CheckpointsNotDurable event")
    with pytest.raises(ApiError):
        cluster.client.get(PersistentVolumeClaim, "fragile-checkpoints", namespace=ns)


def test_an_explicit_empty_dir_says_checkpoints_are_not_durable(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    spec = {"checkpoint": {"volume": {"emptyDir": {}}}}
    cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("scratch", **spec)), namespace=ns)
    cond = wait_condition(cluster, TRAININGJOB_RESOURCE, ns, "scratch", "CheckpointsDurable", "False")
    assert cond["reason"] == "EmptyDirVolume" and "spec.checkpoint.volume" in cond["message"]


def test_names_the_operator_cannot_build_children_from_are_refused_by_the_api_server(
    cluster: ClusterHandle, op_namespace: str
) -> None:
    for name in ("my.job", "a" * 62):
        result = cluster.kubectl(
            "apply",
            "--dry-run=server",
            "-n",
            op_namespace,
            "-f",
            "-",
            stdin=json.dumps(trainingjob(name)),
            check=False,
        )
        assert result.returncode != 0 and "metadata.name" in result.stderr, result.stderr
        ms = json.dumps(modelservice(name))
        result = cluster.kubectl(
            "apply", "--dry-run=server", "-n", op_namespace, "-f", "-", stdin=ms, check=False
        )
        assert result.returncode != 0 and "metadata.name" in result.stderr, result.stderr
