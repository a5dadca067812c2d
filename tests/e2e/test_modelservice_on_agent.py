"""ModelServices end to end on the node agent: the operator's Deployment runs real
`coxswain-server` processes; readiness comes from their real probes; the builtin
autoscaler reads their real /metrics, raises replicas under a load step and lowers them
after the delay; a 10% canary gets 10% of requests; a model that cannot load crash loops
and the ModelService says so.

Requests go to pod IPs (the host has no kube-proxy for Service IPs). Promotion and
rollback change the traffic ConfigMap at run time, which the agent does not refresh in
mounted volumes yet (nodeagent/volumes.py); those run against real servers in
tests/modelservice/ instead.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube.resources.core_v1 import Pod

from agent_fixtures import AgentProcess
from cluster_fixtures import ClusterHandle, wait_for
from coxswain.kube import MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE
from coxswain.modelservice import naming
from operator_fixtures import OperatorProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modelservice"))

from serving_harness import BODY, INFER_PATH, write_repository

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def modelservice(name: str, repository: Path, agent: AgentProcess, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": f"file://{repository}/digits"},
        "repository": {"hostPath": {"path": str(repository)}},
        "resources": {"cpu": "1", "memory": "1Gi"},
        "nodeSelector": agent.selector,
        "versions": {"stable": "v1"},
    }
    base.update(spec)
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": base,
    }


def get(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.client.get(MODELSERVICE_RESOURCE, name, namespace=ns))


def condition(ms: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((dict(c) for c in (ms.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def ready_pod_ips(cluster: ClusterHandle, ns: str, name: str) -> list[str]:
    ips = []
    for pod in cluster.client.list(Pod, namespace=ns, labels={naming.LABEL_MODELSERVICE: name}):
        st = pod.status
        if st and st.podIP and any(c.type == "Ready" and c.status == "True" for c in st.conditions or []):
            ips.append(st.podIP)
    return ips


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_repository(root)
    root.chmod(0o755)
    return root


def test_serves_scales_up_under_load_and_down_when_idle(
    cluster: ClusterHandle,
    agent: AgentProcess,
    operator: OperatorProcess,
    op_namespace: str,
    repository: Path,
) -> None:
    ns = op_namespace
    auto = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "target": {"metric": "inflight", "value": 4},
        "scaleDownDelaySeconds": 15,
    }
    versions = {"stable": "v1", "canary": "v2", "canaryPercent": 10}
    cluster.client.create(
        MODELSERVICE_RESOURCE(modelservice("digits", repository, agent, autoscaling=auto, versions=versions)),
        namespace=ns,
    )
    # Ready is never True before a pod has loaded and warmed up the model.
    seen: list[tuple[str, int]] = []

    def ready() -> bool:
        ms = get(cluster, ns, "digits")
        status = condition(ms, "Ready").get("status", "")
        seen.append((status, (ms.get("status") or {}).get("readyReplicas") or 0))
        return status == "True"

    wait_for(ready, 120, "Ready=True with a real server")
    assert all(ready_count > 0 for status, ready_count in seen if status == "True")
    assert any(status != "True" for status, _ in seen), "Ready was True before any pod was ready"
    ms = get(cluster, ns, "digits")
    assert ms["status"]["versions"] == [
        {"version": "v1", "trafficPercent": 90, "ready": True},
        {"version": "v2", "trafficPercent": 10, "ready": True},
    ]
    assert condition(ms, "ModelLoaded")["status"] == "True"

    # The 10% canary gets 10% of unversioned requests.
    (ip,) = ready_pod_ips(cluster, ns, "digits")
    url = f"http://{ip}:{naming.HTTP_PORT}"
    with httpx.Client(base_url=url, timeout=10) as client:
        versions_seen = collections.Counter(
            client.post(INFER_PATH, json=BODY).headers.get("x-coxswain-version") for _ in range(2000)
        )
    assert 0.07 <= versions_seen["v2"] / 2000 <= 0.13, versions_seen

    # A load step: 12 requests in flight for a target of 4 per replica -> 3 replicas.
    body = Path(os.environ.get("TMPDIR", "/tmp")) / f"ms-e2e-body-{ns}.json"
    body.write_text(httpx.Request("POST", "/", json=BODY).content.decode())
    load = subprocess.Popen(
        [
            "wrk",
            "-t1",
            "-c12",
            "-d120s",
            "--timeout",
            "10s",
            "-s",
            str(REPO / "bench" / "_server_post.lua"),
            url + INFER_PATH,
        ],
        env={**os.environ, "WRK_BODY_FILE": str(body)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.monotonic()
        wait_for(lambda: get(cluster, ns, "digits")["spec"].get("replicas") == 3, 30, "3 replicas wanted")
        decided = time.monotonic() - t0
        wait_for(lambda: len(ready_pod_ips(cluster, ns, "digits")) == 3, 120, "3 real servers ready")
        decision = get(cluster, ns, "digits")["status"]["lastScaleDecision"]
        assert decision["from"] == 1 and decision["to"] == 3 and "in-flight" in decision["reason"]
        assert decided <= 10, decided
    finally:
        load.terminate()
        load.wait(10)
        body.unlink(missing_ok=True)
    # Idle: back to minReplicas after the delay, not before.
    t1 = time.monotonic()
    wait_for(lambda: get(cluster, ns, "digits")["spec"].get("replicas") == 1, 60, "scale-down to 1")
    assert time.monotonic() - t1 >= 14
    wait_for(
        lambda: condition(get(cluster, ns, "digits"), "Ready").get("status") == "True",
        60,
        "Ready at 1 replica",
    )


def test_a_model_that_cannot_load_crash_loops_and_is_not_ready(
    cluster: ClusterHandle,
    agent: AgentProcess,
    operator: OperatorProcess,
    op_namespace: str,
    repository: Path,
) -> None:
    ns = op_namespace
    cluster.client.create(
        MODELSERVICE_RESOURCE(modelservice("missing", repository, agent, versions={"stable": "v9"})),
        namespace=ns,
    )

    def degraded() -> dict[str, Any] | None:
        ms = get(cluster, ns, "missing")
        return ms if condition(ms, "Degraded").get("reason") == "CrashLooping" else None

    ms = wait_for(degraded, 120, "Degraded CrashLooping")
    ready = condition(ms, "Ready")
    assert ready["status"] == "False" and "crash looping" in ready["message"]
    loaded = condition(ms, "ModelLoaded")
    assert loaded["status"] == "False" and loaded["reason"] == "ModelNotFound", loaded
    assert "v9" in loaded["message"]


def test_a_modelservice_naming_a_trainingjob_serves_its_export_once_it_succeeds(
    cluster: ClusterHandle, agent: AgentProcess, operator: OperatorProcess, op_namespace: str, tmp_path: Path
) -> None:
    ns = op_namespace
    models = tmp_path / "models"
    models.mkdir()
    models.chmod(0o777)  # the trainer runs as the pods' non-root user
    spec = {
        "model": {"trainingJobRef": {"name": "mlp"}},
        "resources": {"cpu": "1", "memory": "1Gi"},
        "nodeSelector": agent.selector,
        "versions": {"stable": "v1"},
    }
    ms_doc = {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "served"},
        "spec": spec,
    }
    cluster.client.create(MODELSERVICE_RESOURCE(ms_doc), namespace=ns)
    job = {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "mlp"},
        "spec": {
            "task": {"builtin": {"model": "mlp", "dataset": "digits"}},
            "nodes": 1,
            "nodeSelector": agent.selector,
            "resources": {"cpu": "1", "memory": "1Gi"},
            "optimization": {"batchSize": 128, "epochs": 3},
            "export": {"repository": {"hostPath": {"path": str(models)}}, "modelName": "digits-mlp"},
        },
    }
    cluster.client.create(TRAININGJOB_RESOURCE(job), namespace=ns)
    waiting = condition(get(cluster, ns, "served"), "ModelLoaded")
    assert waiting.get("reason") in (None, "TrainingJobNotReady"), waiting

    def served() -> dict[str, Any] | None:
        ms = get(cluster, ns, "served")
        return ms if condition(ms, "Ready").get("status") == "True" else None

    ms = wait_for(served, 300, "the ModelService Ready on the job's export")
    exported = cluster.client.get(TRAININGJOB_RESOURCE, "mlp", namespace=ns)["status"]["exportedModel"]
    assert [v["version"] for v in ms["status"]["versions"]] == [exported["version"]]
    (ip,) = ready_pod_ips(cluster, ns, "served")
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.25] * 64}]}
    answer = httpx.post(f"http://{ip}:{naming.HTTP_PORT}/v2/models/digits-mlp/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-coxswain-version"] == exported["version"]
