"""The ModelService controller on the real API server, kwok nodes and a real operator process.

kwok pods are Running and Ready at once and nothing answers on their IPs, so these tests
cover objects, the scale subresource, the HPA, status and conditions; the autoscaler and
the canary analysis against real servers are in tests/modelservice/.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from lightkube import ApiError
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import ConfigMap, Pod, Service
from lightkube.types import PatchType

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.kwok_nodes import KWOK_NODE_SELECTOR
from coxswain.kube import MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE
from coxswain.modelservice import naming
from operator_fixtures import OperatorProcess

pytestmark = pytest.mark.cluster


def modelservice(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": "pvc://models/digits"},
        # kwok runs nothing, so a host path is enough (a missing claim would keep pods Pending).
        "repository": {"hostPath": {"path": "/var/lib/coxswain/models"}},
        "resources": {"cpu": "500m", "memory": "512Mi"},
        "versions": {"stable": "v1"},
        # The shared cluster may also hold node-agent Nodes: these pods belong on kwok.
        "nodeSelector": KWOK_NODE_SELECTOR,
    }
    base.update(spec)
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": base,
    }


def create(cluster: ClusterHandle, ns: str, obj: dict[str, Any]) -> None:
    cluster.client.create(MODELSERVICE_RESOURCE(obj), namespace=ns)


def get(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.client.get(MODELSERVICE_RESOURCE, name, namespace=ns))


def condition(ms: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (ms.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def deployment_replicas(cluster: ClusterHandle, ns: str, name: str) -> int | None:
    dep = cluster.client.get(Deployment, name, namespace=ns)
    return dep.spec.replicas if dep.spec else None


def wait_replicas(cluster: ClusterHandle, ns: str, name: str, n: int, timeout: float = 30) -> None:
    def probe() -> bool:
        ms = get(cluster, ns, name)
        return (
            ms["spec"].get("replicas") == n
            and deployment_replicas(cluster, ns, name) == n
            and (ms.get("status") or {}).get("readyReplicas") == n
        )

    wait_for(probe, timeout, f"{name}: spec.replicas, Deployment and ready pods all {n}")


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task": {"builtin": {"model": "mlp", "dataset": "digits"}},
        "nodes": 1,
        "resources": {"cpu": "1", "memory": "1Gi"},
        # A kwok node: the test plays the trainer's part by writing the pod's status.
        "nodeSelector": KWOK_NODE_SELECTOR,
        "export": {"repository": {"hostPath": {"path": "/var/lib/coxswain/models"}}, "modelName": "digits"},
    }
    base.update(spec)
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": base,
    }


def finish_training(cluster: ClusterHandle, ns: str, job: str, version: str) -> None:
    """Rank 0 exits 0 and writes the export to its termination log, as the trainer does."""
    (pod,) = wait_for(
        lambda: [
            p
            for p in cluster.client.list(Pod, namespace=ns, labels={"coxswain.dev/trainingjob": job})
            if p.status and p.status.phase == "Running"
        ],
        60,
        f"the training pod of {job} running",
    )
    assert pod.metadata is not None and pod.metadata.name is not None
    exported = {
        "exportedModel": {"uri": "pvc://models/digits", "modelName": "digits", "version": version},
        "finalStep": 10,
    }
    terminated = {
        "exitCode": 0,
        "reason": "Completed",
        "message": json.dumps(exported),
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
    status = {
        "phase": "Succeeded",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [container],
    }
    cluster.client.patch(
        Pod.Status, pod.metadata.name, {"status": status}, namespace=ns, patch_type=PatchType.STRATEGIC
    )


def test_create_makes_deployment_service_traffic_and_url(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, modelservice("digits", autoscaling={"minReplicas": 2, "maxReplicas": 4}))
    wait_replicas(cluster, ns, "digits", 2)
    ms = wait_for(
        lambda: m if condition(m := get(cluster, ns, "digits"), "Ready").get("status") == "True" else None,
        30,
        "Ready=True",
    )
    st = ms["status"]
    assert st["url"] == f"http://digits.{ns}.svc.cluster.local"
    assert st["grpcUrl"] == f"digits.{ns}.svc.cluster.local:8081"
    assert st["selector"] == "coxswain.dev/modelservice=digits"
    assert st["replicas"] == 2 and st["readyReplicas"] == 2
    assert st["versions"] == [{"version": "v1", "trafficPercent": 100, "ready": True}]
    assert st["lastScaleDecision"]["to"] == 2
    assert condition(ms, "ModelLoaded")["status"] == "True"
    # The serving series dashboards and alerts read (issue 10).
    series = f'name="digits",namespace="{ns}"'

    def scraped() -> str | None:
        try:
            text = operator.metrics()
        except httpx.HTTPError:
            return None  # the operator process may still be starting
        return text if f"coxswain_modelservice_ready{{{series}}} 1.0" in text else None

    text = wait_for(scraped, 30, "the operator's serving metrics")
    assert f"coxswain_modelservice_ready_replicas{{{series}}} 2.0" in text
    assert f"coxswain_modelservice_desired_replicas{{{series}}} 2.0" in text

    dep = cluster.client.get(Deployment, "digits", namespace=ns)
    assert dep.metadata is not None and dep.metadata.ownerReferences is not None
    assert dep.metadata.ownerReferences[0].kind == "ModelService"
    assert (
        dep.spec is not None and dep.spec.strategy is not None and dep.spec.strategy.rollingUpdate is not None
    )
    assert dep.spec.strategy.rollingUpdate.maxUnavailable == 0
    svc = cluster.client.get(Service, "digits", namespace=ns)
    assert svc.spec is not None and svc.spec.type == "ClusterIP" and svc.spec.ports is not None
    assert svc.spec.ports[0].port == 80 and svc.spec.selector == {naming.LABEL_MODELSERVICE: "digits"}
    cm = cluster.client.get(ConfigMap, "digits-traffic", namespace=ns)
    assert cm.data is not None and json.loads(cm.data["traffic.json"]) == {"weights": {"v1": 100}}

    pods = list(cluster.client.list(Pod, namespace=ns, labels={naming.LABEL_MODELSERVICE: "digits"}))
    assert len(pods) == 2
    spec = pods[0].spec
    assert spec is not None and spec.automountServiceAccountToken is False
    (c,) = spec.containers
    assert c.startupProbe is not None and c.startupProbe.httpGet is not None
    assert c.startupProbe.httpGet.path == "/v2/health/ready"
    assert c.securityContext is not None and c.securityContext.readOnlyRootFilesystem is True

    # A canary changes the weights in the ConfigMap, not the pods: no rollout.
    template = dep.spec.template.metadata
    cluster.client.patch(
        MODELSERVICE_RESOURCE,
        "digits",
        {"spec": {"versions": {"canary": "v2", "canaryPercent": 20}}},
        namespace=ns,
        patch_type=PatchType.MERGE,
    )
    wait_for(
        lambda: (
            json.loads(
                (cluster.client.get(ConfigMap, "digits-traffic", namespace=ns).data or {})["traffic.json"]
            )
            == {"weights": {"v1": 80, "v2": 20}}
        ),
        30,
        "canary weights in the ConfigMap",
    )
    after = cluster.client.get(Deployment, "digits", namespace=ns)
    assert after.spec is not None and after.spec.template.metadata == template


def test_kubectl_scale_through_the_subresource_and_bounds_hold(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, modelservice("free", autoscaling={"mode": "none"}))
    create(cluster, ns, modelservice("bounded", autoscaling={"minReplicas": 2, "maxReplicas": 3}))
    wait_replicas(cluster, ns, "bounded", 2)
    wait_for(lambda: deployment_replicas(cluster, ns, "free") == 1, 30, "free: 1 replica")

    cluster.kubectl("scale", "-n", ns, "ms/free", "--replicas", "3")
    wait_replicas(cluster, ns, "free", 3)
    scale = cluster.kubectl(
        "get", "-n", ns, "--raw", f"/apis/coxswain.dev/v1alpha1/namespaces/{ns}/modelservices/free/scale"
    )
    doc = json.loads(scale.stdout)
    assert doc["spec"]["replicas"] == 3 and doc["status"]["replicas"] == 3
    assert doc["status"]["selector"] == "coxswain.dev/modelservice=free"

    # The builtin autoscaler keeps minReplicas and maxReplicas, whoever writes replicas.
    cluster.kubectl("scale", "-n", ns, "ms/bounded", "--replicas", "7")
    wait_replicas(cluster, ns, "bounded", 3)
    decision = get(cluster, ns, "bounded")["status"]["lastScaleDecision"]
    assert decision["from"] == 7 and decision["to"] == 3 and "maxReplicas" in decision["reason"]
    cluster.kubectl("scale", "-n", ns, "ms/bounded", "--replicas", "0")
    wait_replicas(cluster, ns, "bounded", 2)


def test_hpa_mode_makes_an_hpa_on_the_scale_subresource(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    auto = {"mode": "hpa", "minReplicas": 2, "maxReplicas": 5, "scaleDownDelaySeconds": 90}
    create(cluster, ns, modelservice("auto", autoscaling=auto))
    hpa = wait_for(lambda: cluster.client.get(HorizontalPodAutoscaler, "auto", namespace=ns), 30, "the HPA")
    assert hpa.spec is not None
    ref = hpa.spec.scaleTargetRef
    assert (ref.apiVersion, ref.kind, ref.name) == ("coxswain.dev/v1alpha1", "ModelService", "auto")
    assert (hpa.spec.minReplicas, hpa.spec.maxReplicas) == (2, 5)

    # The HPA controller must be able to read the scale subresource: it says so in a condition.
    def able() -> bool:
        h = cluster.client.get(HorizontalPodAutoscaler, "auto", namespace=ns)
        conds = {c.type: c for c in (h.status.conditions if h.status and h.status.conditions else [])}
        return "AbleToScale" in conds and conds["AbleToScale"].status == "True"

    wait_for(able, 60, "HPA condition AbleToScale=True")
    # Handing scaling back to the operator removes the HPA.
    cluster.client.patch(
        MODELSERVICE_RESOURCE,
        "auto",
        {"spec": {"autoscaling": {"mode": "builtin"}}},
        namespace=ns,
        patch_type=PatchType.MERGE,
    )

    def gone() -> bool:
        try:
            cluster.client.get(HorizontalPodAutoscaler, "auto", namespace=ns)
        except ApiError as exc:
            return exc.status.code == 404
        return False

    wait_for(gone, 30, "the HPA deleted")


def test_ready_is_false_while_pods_cannot_run_or_crash_loop(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    # No kwok node has 16 GPUs: the pod stays Pending and the status says why.
    create(cluster, ns, modelservice("huge", resources={"gpus": 16, "cpu": "1", "memory": "1Gi"}))
    ms = wait_for(
        lambda: (
            m if condition(m := get(cluster, ns, "huge"), "Degraded").get("reason") == "PodsPending" else None
        ),
        60,
        "Degraded PodsPending",
    )
    ready = condition(ms, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "NoReadyReplicas"
    assert "cannot be scheduled" in condition(ms, "Degraded")["message"]

    # A pod whose server cannot load the model crash loops: the kubelet's status says so.
    create(cluster, ns, modelservice("crashy"))
    wait_for(
        lambda: condition(get(cluster, ns, "crashy"), "Ready").get("status") == "True", 60, "crashy Ready"
    )
    (pod,) = cluster.client.list(Pod, namespace=ns, labels={naming.LABEL_MODELSERVICE: "crashy"})
    assert pod.metadata is not None and pod.metadata.name is not None
    message = "cannot serve model digits: no versions of model digits in /models"
    cluster.client.patch(
        Pod.Status,
        pod.metadata.name,
        {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "ContainersReady", "status": "False"},
                ],
                "containerStatuses": [
                    {
                        "name": "server",
                        "image": "ghcr.io/coxswain-dev/server:0.1.0",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 5,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s"}},
                        "lastState": {
                            "terminated": {
                                "exitCode": 1,
                                "reason": "Error",
                                "message": message,
                                "startedAt": "2026-01-01T00:00:00Z",
                                "finishedAt": "2026-01-01T00:00:01Z",
                            }
                        },
                    }
                ],
            }
        },
        namespace=ns,
        patch_type=PatchType.STRATEGIC,
    )
    ms = wait_for(
        lambda: m if condition(m := get(cluster, ns, "crashy"), "Ready").get("status") == "False" else None,
        30,
        "Ready=False after the crash loop",
    )
    assert "crash looping" in condition(ms, "Ready")["message"]
    assert condition(ms, "Degraded")["reason"] == "CrashLooping"
    loaded = condition(ms, "ModelLoaded")
    assert (
        loaded["status"] == "False" and loaded["reason"] == "ModelNotFound" and message in loaded["message"]
    )


def test_deleting_removes_everything(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, modelservice("gone", autoscaling={"mode": "hpa"}))
    wait_for(lambda: cluster.client.get(HorizontalPodAutoscaler, "gone", namespace=ns), 30, "the HPA")
    wait_replicas(cluster, ns, "gone", 1)
    cluster.client.delete(MODELSERVICE_RESOURCE, "gone", namespace=ns)
    labels = {naming.LABEL_MODELSERVICE: "gone"}

    def empty() -> bool:
        return not any(
            list(cluster.client.list(kind, namespace=ns, labels=labels))
            for kind in (Deployment, Service, ConfigMap, HorizontalPodAutoscaler, Pod)
        )

    wait_for(empty, 60, "Deployment, Service, ConfigMap, HPA and pods garbage-collected")


def test_training_job_ref_waits_for_the_job_then_serves_its_export(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    ns = op_namespace
    create(cluster, ns, modelservice("served", model={"trainingJobRef": {"name": "train"}}, repository=None))
    ms = wait_for(
        lambda: m if condition(m := get(cluster, ns, "served"), "ModelLoaded").get("reason") else None,
        30,
        "ModelLoaded",
    )
    loaded = condition(ms, "ModelLoaded")
    assert (
        loaded["status"] == "False"
        and loaded["reason"] == "TrainingJobNotReady"
        and "does not exist" in loaded["message"]
    )

    job = trainingjob("train")
    cluster.client.create(TRAININGJOB_RESOURCE(job), namespace=ns)
    msg = wait_for(
        lambda: (
            m
            if "waiting for TrainingJob train"
            in (m := condition(get(cluster, ns, "served"), "ModelLoaded").get("message", ""))
            else None
        ),
        60,
        "ModelLoaded message following the job",
    )
    assert "phase" in msg
    with pytest.raises(ApiError):
        cluster.client.get(Deployment, "served", namespace=ns)

    finish_training(cluster, ns, "train", "v7")
    dep = wait_for(
        lambda: cluster.client.get(Deployment, "served", namespace=ns), 90, "the Deployment after success"
    )
    assert dep.spec is not None
    env = (
        {e.name: e.value for e in dep.spec.template.spec.containers[0].env or []}
        if dep.spec.template.spec
        else {}
    )
    assert env["COXSWAIN_SERVER_MODEL"] == "digits"
    cm = wait_for(
        lambda: cluster.client.get(ConfigMap, "served-traffic", namespace=ns), 30, "the traffic ConfigMap"
    )
    assert cm.data is not None and json.loads(cm.data["traffic.json"]) == {"weights": {"v7": 100}}
    volumes = {v.name: v for v in dep.spec.template.spec.volumes or []} if dep.spec.template.spec else {}
    host = volumes["models"].hostPath
    assert host is not None and host.path == "/var/lib/coxswain/models"
    wait_for(
        lambda: condition(get(cluster, ns, "served"), "Ready").get("status") == "True",
        60,
        "Ready after the export",
    )


def test_a_succeeded_training_job_rolls_its_version_into_the_modelservice_that_names_it(
    cluster: ClusterHandle, operator: OperatorProcess, op_namespace: str
) -> None:
    # Issue 15: the hand-off changes only a ModelService whose trainingJobRef names the job
    # (tests/cluster/test_operator_hardening.py shows the refusal). Such a service serves the job's
    # export as its stable version, so the canary the hand-off writes is that same version.
    ns = op_namespace
    create(cluster, ns, modelservice("digits", model={"trainingJobRef": {"name": "retrain"}}))
    serving = {"modelService": "digits", "rollout": "canary", "canaryPercent": 20}
    cluster.client.create(TRAININGJOB_RESOURCE(trainingjob("retrain", serving=serving)), namespace=ns)
    finish_training(cluster, ns, "retrain", "v2")
    ms = wait_for(
        lambda: m if (m := get(cluster, ns, "digits"))["spec"]["versions"].get("canary") == "v2" else None,
        30,
        "the handoff to patch the canary",
    )
    assert ms["spec"]["versions"]["canaryPercent"] == 20
    wait_for(
        lambda: (
            json.loads(
                (cluster.client.get(ConfigMap, "digits-traffic", namespace=ns).data or {})["traffic.json"]
            )
            == {"weights": {"v2": 100}}
        ),
        60,
        "the exported version's weights for the pods",
    )
