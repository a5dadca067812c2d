"""ModelServices end to end on the real node, all in containers: the operator from its image
(installed by helm), `coxswain-server` pods of the server image (uid 1000, read-only root, CPU
limits) reading the model repository from a hostPath volume, readiness from their real probes,
the autoscaler reading their real /metrics over the pod network, and the canary analysis
moving real traffic weights through the ConfigMap volume the kubelet refreshes.

Requests go to pod addresses: this machine routes the node's pod range onto its bridge (Service
virtual IPs are rewritten by kube-proxy inside the node's network namespace only)."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube.types import PatchType
from realnode_harness import (
    NODE_SELECTOR,
    SERVER_RESOURCES,
    condition,
    get,
    modelservice,
    operator_log,
    ready_pod_ips,
    wait_ready,
)

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.kube import MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE
from coxswain.modelservice import naming

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modelservice"))

from serving_harness import BODY, INFER_PATH

pytestmark = pytest.mark.realnode

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def steady_load(url: str) -> Iterator[list[tuple[int, str | None]]]:
    """One client sending requests back to back to `url`; yields (status, version) of each."""
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.post(INFER_PATH, json=BODY)
                    results.append((r.status_code, r.headers.get("x-coxswain-version")))
                except httpx.HTTPError:
                    results.append((0, None))
                time.sleep(0.005)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield results
    finally:
        stop.set()
        thread.join(15)


def test_serves_splits_scales_up_under_load_and_down_when_idle(
    real_cluster: ClusterHandle, real_release: str, release_namespace: str, repository: Path
) -> None:
    cluster, ns = real_cluster, release_namespace
    auto = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "target": {"metric": "inflight", "value": 4},
        "scaleDownDelaySeconds": 15,
    }
    versions = {"stable": "v1", "canary": "v2", "canaryPercent": 10}
    cluster.client.create(
        MODELSERVICE_RESOURCE(modelservice("digits", repository, autoscaling=auto, versions=versions)),
        namespace=ns,
    )
    ms = wait_ready(cluster, ns, "digits")
    assert ms["status"]["versions"] == [
        {"version": "v1", "trafficPercent": 90, "ready": True},
        {"version": "v2", "trafficPercent": 10, "ready": True},
    ]
    assert condition(ms, "ModelLoaded")["status"] == "True"

    # The 10% canary gets 10% of unversioned requests.
    (ip,) = ready_pod_ips(cluster, ns, "digits")
    url = f"http://{ip}:{naming.HTTP_PORT}"
    with httpx.Client(base_url=url, timeout=10) as client:
        seen = collections.Counter(
            client.post(INFER_PATH, json=BODY).headers.get("x-coxswain-version") for _ in range(1000)
        )
    assert 0.06 <= seen["v2"] / 1000 <= 0.14, seen

    # A load step: 12 requests in flight for a target of 4 per replica -> 3 replicas.
    body = Path(os.environ.get("TMPDIR", "/tmp")) / f"ms-realnode-body-{ns}.json"
    body.write_text(httpx.Request("POST", "/", json=BODY).content.decode())
    load = subprocess.Popen(
        ["wrk", "-t1", "-c12", "-d180s", "--timeout", "10s", "-s", str(REPO / "bench" / "_server_post.lua"),
         url + INFER_PATH],
        env={**os.environ, "WRK_BODY_FILE": str(body)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: get(cluster, ns, "digits")["spec"].get("replicas") == 3, 60, "3 replicas wanted")
        wait_for(lambda: len(ready_pod_ips(cluster, ns, "digits")) == 3, 240, "3 server pods ready")
        # In one step or two (a scrape that caught the load still ramping up asks for 2 first).
        decision = get(cluster, ns, "digits")["status"]["lastScaleDecision"]
        assert decision["from"] in (1, 2) and decision["to"] == 3 and "in-flight" in decision["reason"], (
            decision
        )
    finally:
        load.terminate()
        load.wait(10)
        body.unlink(missing_ok=True)
    # Idle: back to minReplicas after the delay. In one step, or in two when a scrape while the
    # load still ran asked for 2 (the autoscaler goes down only to the most asked for meanwhile).
    wait_for(lambda: get(cluster, ns, "digits")["spec"].get("replicas") == 1, 90, "scale-down to 1")
    decision = get(cluster, ns, "digits")["status"]["lastScaleDecision"]
    assert decision["from"] in (2, 3) and decision["to"] == 1, decision
    wait_for(lambda: len(ready_pod_ips(cluster, ns, "digits")) == 1, 120, "one server pod left")
    wait_ready(cluster, ns, "digits", 60)


def canary_under_load(
    cluster: ClusterHandle, ns: str, repository: Path, name: str, canary: str, phase: str
) -> tuple[dict[str, Any], list[tuple[int, str | None]], int]:
    """v1 stable under steady load, then `canary` with an analysis (5 s interval) until the
    canary record reaches `phase`; returns the ModelService, the load's results and where they
    stood when `phase` was reached."""
    cluster.client.create(MODELSERVICE_RESOURCE(modelservice(name, repository)), namespace=ns)
    wait_ready(cluster, ns, name)
    (ip,) = ready_pod_ips(cluster, ns, name)
    with steady_load(f"http://{ip}:{naming.HTTP_PORT}") as results:
        wait_for(lambda: len(results) >= 20, 60, "the steady load under way")
        versions = {
            "stable": "v1",
            "canary": canary,
            "analysis": {"intervalSeconds": 5, "minRequests": 20, "steps": [10, 50, 100]},
        }
        cluster.client.patch(
            MODELSERVICE_RESOURCE,
            name,
            {"spec": {"versions": versions}},
            namespace=ns,
            patch_type=PatchType.MERGE,
        )

        def reached() -> dict[str, Any] | None:
            ms = get(cluster, ns, name)
            return ms if ((ms.get("status") or {}).get("canary") or {}).get("phase") == phase else None

        try:
            ms = wait_for(reached, 240, f"canary {canary} {phase}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n{get(cluster, ns, name).get('status')}\n{operator_log(cluster)}"
            ) from exc
        mark = len(results)
        # The weights reach the server through the ConfigMap volume (the kubelet's sync period):
        # wait until every answer comes from the version the analysis chose. A run of 150 (about
        # a second of this load): a pod still sending 10% to the canary gives 30 in a row 4% of
        # the time, 150 in a row once in seven million.
        final = canary if phase == "Promoted" else "v1"

        def settled() -> bool:
            tail = results[-150:]
            return len(results) >= mark + 150 and all(code == 200 and v == final for code, v in tail)

        wait_for(settled, 90, f"every request answered by {final}")
        settled_at = len(results)
        time.sleep(1.0)
    return ms, results, settled_at


def test_canary_is_promoted_under_load_without_a_failed_request(
    real_cluster: ClusterHandle, real_release: str, release_namespace: str, repository: Path
) -> None:
    ms, results, settled_at = canary_under_load(
        real_cluster, release_namespace, repository, "promoted", "v2", "Promoted"
    )
    assert ms["status"]["canary"]["version"] == "v2"
    assert len(results) > 100
    assert all(code == 200 for code, _ in results), collections.Counter(code for code, _ in results)
    assert {v for _, v in results[settled_at:]} == {"v2"}


def test_broken_canary_is_rolled_back_under_load(
    real_cluster: ClusterHandle, real_release: str, release_namespace: str, repository: Path
) -> None:
    ms, results, settled_at = canary_under_load(
        real_cluster, release_namespace, repository, "rolledback", "v3", "RolledBack"
    )
    record = ms["status"]["canary"]
    assert record["version"] == "v3" and "error rate" in record["message"], record
    assert condition(ms, "Degraded").get("reason") == "CanaryRolledBack"
    assert any(code != 200 for code, _ in results[:settled_at]), "the broken canary never failed a request"
    assert all(code == 200 and v == "v1" for code, v in results[settled_at:])


def test_a_model_that_cannot_load_crash_loops_and_is_not_ready(
    real_cluster: ClusterHandle, real_release: str, release_namespace: str, repository: Path
) -> None:
    cluster, ns = real_cluster, release_namespace
    cluster.client.create(
        MODELSERVICE_RESOURCE(modelservice("missing", repository, versions={"stable": "v9"})), namespace=ns
    )

    def degraded() -> dict[str, Any] | None:
        ms = get(cluster, ns, "missing")
        return ms if condition(ms, "Degraded").get("reason") == "CrashLooping" else None

    ms = wait_for(degraded, 240, "Degraded CrashLooping")
    ready = condition(ms, "Ready")
    assert ready["status"] == "False" and "crash looping" in ready["message"]
    loaded = condition(ms, "ModelLoaded")
    assert loaded["status"] == "False" and loaded["reason"] == "ModelNotFound", loaded
    assert "v9" in loaded["message"]


def test_a_modelservice_naming_a_trainingjob_serves_its_export_once_it_succeeds(
    real_cluster: ClusterHandle, real_release: str, release_namespace: str, tmp_path: Path
) -> None:
    cluster, ns = real_cluster, release_namespace
    models = tmp_path / "models"
    models.mkdir()
    os.chown(models, 1000, 1000)  # the trainer writes it as the images' uid
    tmp_path.chmod(0o755)
    ms_doc = {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "served"},
        "spec": {
            "model": {"trainingJobRef": {"name": "mlp"}},
            "resources": SERVER_RESOURCES,
            "nodeSelector": NODE_SELECTOR,
            "versions": {"stable": "v1"},
        },
    }
    cluster.client.create(MODELSERVICE_RESOURCE(ms_doc), namespace=ns)
    job = {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "mlp"},
        "spec": {
            # No image: the CRD's default, the trainer image on the node.
            "task": {"builtin": {"model": "mlp", "dataset": "digits"}},
            "nodes": 1,
            "nodeSelector": NODE_SELECTOR,
            "resources": {"cpu": "900m", "memory": "1Gi"},
            "optimization": {"batchSize": 128, "epochs": 3},
            "export": {"repository": {"hostPath": {"path": str(models)}}, "modelName": "digits-mlp"},
        },
    }
    cluster.client.create(TRAININGJOB_RESOURCE(job), namespace=ns)
    waiting = condition(get(cluster, ns, "served"), "ModelLoaded")
    assert waiting.get("reason") in (None, "TrainingJobNotReady"), waiting

    ms = wait_ready(cluster, ns, "served", 600)
    exported = cluster.client.get(TRAININGJOB_RESOURCE, "mlp", namespace=ns)["status"]["exportedModel"]
    assert [v["version"] for v in ms["status"]["versions"]] == [exported["version"]]
    (ip,) = ready_pod_ips(cluster, ns, "served")
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.25] * 64}]}
    answer = httpx.post(f"http://{ip}:{naming.HTTP_PORT}/v2/models/digits-mlp/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-coxswain-version"] == exported["version"]
