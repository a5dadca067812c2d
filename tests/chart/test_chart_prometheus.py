"""A real Prometheus scrapes the operator, a trainer and a model server; every query of
every dashboard panel and every alert rule must return data from them.

The operator runs as a process against the local cluster (the `operator` fixture), the
trainer and the server as local processes on loopback (what their pods run), and Debian's
Prometheus scrapes them with the labels the chart's ServiceMonitor and PodMonitors give.
Conditions the queries need are forced the way the controller tests force them on kwok: a
failed pod (restarts, a failed job), a job that makes no progress (stalled), a finished job,
ModelServices whose pods never answer (not ready, scrape failures) or have a canary.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from chart_harness import REPO, RULES_FILE, alert_queries, concrete, dashboard_queries, delete_custom_objects
from lightkube.resources.core_v1 import Pod

from activator_fixtures import ActivatorProcess, activator_service
from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.kwok_nodes import EXIT_CODE_ANNOTATION, KWOK_NODE_SELECTOR
from coxswain.kube import MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE
from coxswain.trainingjob import naming
from operator_fixtures import OperatorProcess, free_port

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="prometheus missing: dev/install-system-deps.sh"
    ),
]

sys.path.insert(0, str(REPO / "tests" / "server"))

# Only the automatic canary analysis makes these series, and it needs server pods that
# really answer: not possible on kwok; the node agent's end-to-end tests can force one.
NEEDS_A_REAL_ROLLBACK = {
    "coxswain-serving.json: Canary rollbacks and promotions (A)",
    "coxswain-serving.json: Canary rollbacks and promotions (B)",
    "CoxswainCanaryRolledBack",
}


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(workdir: Path, jobs: list[dict[str, Any]]) -> Prometheus:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": jobs,
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{prom.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 60, "Prometheus ready")
    return prom


def _tj(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task": {"builtin": {"model": "mlp", "dataset": "digits"}},
        "nodes": 1,
        "resources": {"cpu": "1", "memory": "1Gi"},
        "failurePolicy": {"maxRestarts": 1, "backoffSeconds": 1, "maxBackoffSeconds": 1},
        # kwok nodes only: the shared cluster may also hold node-agent Nodes that run pods.
        "nodeSelector": KWOK_NODE_SELECTOR,
        **spec,
    }
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": base,
    }


def _ms(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": "pvc://models/digits"},
        "repository": {"hostPath": {"path": "/var/lib/coxswain/models"}},
        "resources": {"cpu": "500m", "memory": "512Mi"},
        "versions": {"stable": "v1"},
        **spec,
    }
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": base,
    }


def _running_pod(cluster: ClusterHandle, ns: str, job: str, attempt: int) -> Pod:
    def probe() -> Pod | None:
        pods = cluster.client.list(
            Pod, namespace=ns, labels={naming.LABEL_TRAININGJOB: job, naming.LABEL_ATTEMPT: str(attempt)}
        )
        return next((p for p in pods if p.status and p.status.phase == "Running"), None)

    return wait_for(probe, 90, f"a running pod of {job} attempt {attempt}")


def _end(cluster: ClusterHandle, ns: str, pod: Pod, code: int) -> None:
    assert pod.metadata is not None and pod.metadata.name is not None
    cluster.client.patch(
        Pod, pod.metadata.name, {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: str(code)}}}, namespace=ns
    )


def _phase(cluster: ClusterHandle, ns: str, name: str) -> str | None:
    status = cluster.client.get(TRAININGJOB_RESOURCE, name, namespace=ns).get("status") or {}
    return status.get("phase")


def _start_trainer(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """Rank 0 of a one-process gang, training long enough to be scraped (killed afterwards)."""
    spec = {
        "task": {"builtin": {"model": "mlp", "dataset": "digits", "hiddenSizes": [32]}},
        "optimization": {"batchSize": 64, "epochs": 100000},
        "evaluation": {"intervalSteps": 20},
        "checkpoint": {"intervalSteps": 100000, "keep": 1},
    }
    config = workdir / "trainer.yaml"
    config.write_text(yaml.safe_dump(spec))
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "COXSWAIN_METRICS_PORT": str(port),
        "COXSWAIN_CHECKPOINT_DIR": str(workdir / "checkpoints"),
        "COXSWAIN_MODEL_REPOSITORY": str(workdir / "models"),
        "COXSWAIN_TERMINATION_LOG": str(workdir / "termination-log"),
    }
    with open(workdir / "trainer.log", "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "coxswain_trainer", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )


def _start_server(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    from server_models import write_model

    repository = workdir / "repository"
    write_model(repository, "digits", "v1", "mlp", seed=1)
    with open(workdir / "server.log", "wb") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "coxswain_server", "--repository", str(repository), "--model", "digits",
                "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
                # Lone requests wait this long for a batch to fill: p99 lands over the 250 ms target.
                "--max-latency-ms", "300", "--max-batch-size", "64",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def _post(client: httpx.Client, **kwargs: Any) -> None:
    # A slow or refused request on a loaded machine only costs one sample; the load goes on.
    with contextlib.suppress(httpx.HTTPError):
        client.post("/v2/models/digits/infer", **kwargs)


def _send_requests(url: str, stop: threading.Event) -> None:
    """Bursts of concurrent requests (batches > 1), lone ones (slow) and a malformed one (400)."""
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            threads = [
                threading.Thread(target=_post, args=(client,), kwargs={"json": body}) for _ in range(8)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            _post(client, json=body)
            _post(client, content=b"{not json")
            stop.wait(0.5)


def _held_at_zero(activator: ActivatorProcess, host: str) -> None:
    """One HTTP request and one gRPC call through the activator for `host`'s service."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    response = httpx.get(
        f"http://127.0.0.1:{activator.port}/v2/health/ready", headers={"Host": host}, timeout=60
    )
    assert response.status_code in (200, 502, 503), response.text
    with grpc.insecure_channel(
        f"127.0.0.1:{activator.grpc_port}", options=[("grpc.default_authority", f"{host}:8081")]
    ) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with contextlib.suppress(grpc.RpcError):
            stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=60)


@pytest.fixture(scope="module")
def scraped(
    cluster: ClusterHandle, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    import uuid

    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Namespace

    workdir = tmp_path_factory.mktemp("prometheus")
    ns = f"op-{uuid.uuid4().hex[:8]}"
    cluster.client.create(Namespace(metadata=ObjectMeta(name=ns)))
    trainer_port, server_port = free_port(), free_port()
    trainer = _start_trainer(workdir, trainer_port)
    server = _start_server(workdir, server_port)
    # Holds for 2 s only: its series exist once it has held a request and a gRPC connection.
    activator = ActivatorProcess(cluster, hold_timeout=2)
    stop = threading.Event()
    prom: Prometheus | None = None
    try:
        # Labels as the chart's monitors give them: the operator's per-object labels kept
        # (honor_labels), the pod's TrainingJob / ModelService copied onto trainer and server.
        prom = start_prometheus(
            workdir,
            [
                {
                    "job_name": "coxswain-operator",
                    "honor_labels": True,
                    "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
                },
                {
                    "job_name": "coxswain-trainers",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{trainer_port}"],
                            "labels": {"namespace": ns, "trainingjob": "live", "pod": "live-1-0"},
                        }
                    ],
                },
                {
                    "job_name": "coxswain-activator",
                    "honor_labels": True,
                    "static_configs": [{"targets": [f"127.0.0.1:{activator.admin_port}"]}],
                },
                {
                    "job_name": "coxswain-servers",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{server_port}"],
                            "labels": {"namespace": ns, "modelservice": "digits", "pod": "digits-0"},
                        }
                    ],
                },
            ],
        )
        c = cluster.client
        # A job whose rank 0 is the local trainer: its pod's address points at loopback, so the
        # operator pulls real progress (progress ratio, ETA) from it.
        c.create(
            TRAININGJOB_RESOURCE(_tj("live", ports={"metrics": trainer_port, "rendezvous": 29400})),
            namespace=ns,
        )
        c.create(TRAININGJOB_RESOURCE(_tj("stuck", stall={"timeoutSeconds": 30})), namespace=ns)
        c.create(TRAININGJOB_RESOURCE(_tj("flaky")), namespace=ns)
        c.create(TRAININGJOB_RESOURCE(_tj("done")), namespace=ns)
        c.create(
            MODELSERVICE_RESOURCE(_ms("unplaceable", resources={"gpus": 8, "cpu": "1", "memory": "1Gi"})),
            namespace=ns,
        )
        c.create(
            MODELSERVICE_RESOURCE(
                _ms("canary", versions={"stable": "v1", "canary": "v2", "canaryPercent": 20})
            ),
            namespace=ns,
        )

        # At zero replicas with an activator known: a request and a gRPC call are held, wake it
        # (0 -> 1) and, its kwok pod never answering, time out (503, UNAVAILABLE).
        activator_service(cluster, ns, "192.0.2.10", activator.port, activator.grpc_port)
        c.create(
            MODELSERVICE_RESOURCE(
                _ms(
                    "sleepy",
                    replicas=0,
                    autoscaling={"minReplicas": 0, "maxReplicas": 1},
                    nodeSelector=KWOK_NODE_SELECTOR,
                )
            ),
            namespace=ns,
        )
        wait_for(activator.ready, 60, "the activator's EndpointSlice watch")
        _held_at_zero(activator, f"sleepy.{ns}.svc.cluster.local")

        live = _running_pod(cluster, ns, "live", 1)
        assert live.metadata is not None and live.metadata.name is not None
        c.patch(Pod.Status, live.metadata.name, {"status": {"podIP": "127.0.0.1"}}, namespace=ns)
        _end(cluster, ns, _running_pod(cluster, ns, "done", 1), 0)
        _end(cluster, ns, _running_pod(cluster, ns, "flaky", 1), 1)
        _end(cluster, ns, _running_pod(cluster, ns, "flaky", 2), 1)
        wait_for(lambda: _phase(cluster, ns, "flaky") == "Failed" or None, 90, "flaky Failed")
        wait_for(lambda: _phase(cluster, ns, "done") == "Succeeded" or None, 90, "done Succeeded")

        server_url = f"http://127.0.0.1:{server_port}"

        def server_ready() -> bool:
            assert server.poll() is None, (workdir / "server.log").read_text()[-3000:]
            try:
                return httpx.get(f"{server_url}/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(server_ready, 120, "the model server ready")
        threading.Thread(target=_send_requests, args=(server_url, stop), daemon=True).start()

        def stalled() -> bool:
            status = c.get(TRAININGJOB_RESOURCE, "stuck", namespace=ns).get("status") or {}
            return any(x["type"] == "Stalled" and x["status"] == "True" for x in status.get("conditions", []))

        wait_for(stalled, 90, "stuck Stalled")
        progress = wait_for(
            lambda: (c.get(TRAININGJOB_RESOURCE, "live", namespace=ns).get("status") or {}).get("progress"),
            60,
            "live's progress pulled from the trainer",
        )
        assert progress["step"] > 0
        time.sleep(5)  # a few more scrapes, so rates over them have two samples
        yield prom
    finally:
        stop.set()
        activator.stop()
        for proc in (trainer, server):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if prom is not None:
            prom.stop()
        delete_custom_objects(cluster, ns)
        cluster.client.delete(Namespace, ns)


def _no_data(prom: Prometheus, queries: list[tuple[str, str]]) -> list[str]:
    return [where for where, expr in queries if not prom.query(concrete(expr))]


def test_every_dashboard_query_returns_data(scraped: Prometheus) -> None:
    missing = set(_no_data(scraped, dashboard_queries()))
    assert missing - NEEDS_A_REAL_ROLLBACK == set(), f"no data for: {sorted(missing)}"


def test_every_alert_fires_on_its_forced_condition(scraped: Prometheus) -> None:
    missing = set(_no_data(scraped, alert_queries()))
    assert missing - NEEDS_A_REAL_ROLLBACK == set(), f"no data for: {sorted(missing)}"
    # Prometheus itself evaluates the rules file: the alerts without a `for` are firing now.
    firing = {a["metric"]["alertname"] for a in scraped.query('ALERTS{alertstate="firing"}')}
    assert {
        "CoxswainTrainingJobFailed",
        "CoxswainTrainingJobStalled",
        "CoxswainTrainingJobRestartBudgetNearlySpent",
    } <= firing


def test_rollback_queries_are_the_only_ones_without_data(scraped: Prometheus) -> None:
    """Keeps NEEDS_A_REAL_ROLLBACK honest: once a rollback can be forced here, this fails."""
    everything = dashboard_queries() + alert_queries()
    assert set(_no_data(scraped, everything)) == NEEDS_A_REAL_ROLLBACK
    up = {r["metric"]["job"]: r["value"][1] for r in scraped.query("up")}
    assert up == {
        "coxswain-operator": "1",
        "coxswain-trainers": "1",
        "coxswain-servers": "1",
        "coxswain-activator": "1",
    }
