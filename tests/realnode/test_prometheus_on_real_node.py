"""Prometheus scrapes the operator's pod and a model server's pod at their real pod addresses on
the real node (the pods the chart's monitors select, by their labels): the operator's /metrics
and the server's /metrics, with the series the dashboards read."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from lightkube.resources.core_v1 import Pod
from realnode_harness import RELEASE, RELEASE_NAMESPACE, modelservice, ready_pod_ips, wait_ready

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.kube import MODELSERVICE_RESOURCE
from coxswain.modelservice import naming
from operator_fixtures import free_port

# The chart's metrics.port.
OPERATOR_METRICS_PORT = 8080

pytestmark = [
    pytest.mark.realnode,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="prometheus missing: dev/install-system-deps.sh"
    ),
]


def static_job(name: str, pods: list[Pod], port: int) -> dict[str, Any]:
    """A scrape job for these pods at their pod addresses, labelled with their names. Debian's
    Prometheus is built without kubernetes_sd, so the test lists the pods the chart's
    PodMonitors select (by the same labels) through the API server and hands them over."""
    return {
        "job_name": name,
        "scrape_interval": "2s",
        "static_configs": [
            {"targets": [f"{p.status.podIP}:{port}"], "labels": {"pod": p.metadata.name}}
            for p in pods
            if p.status and p.status.podIP and p.metadata and p.metadata.name
        ],
    }


@contextmanager
def prometheus(workdir: Path, jobs: list[dict[str, Any]]) -> Iterator[str]:
    (workdir / "prometheus.yml").write_text(
        yaml.safe_dump({"global": {"scrape_interval": "2s"}, "scrape_configs": jobs})
    )
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 60, "Prometheus ready")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def up_targets(url: str, job: str) -> dict[str, str]:
    """instance -> pod of the job's targets whose last scrape succeeded."""
    body = httpx.get(f"{url}/api/v1/query", params={"query": f'up{{job="{job}"}} == 1'}, timeout=10).json()
    return {
        r["metric"]["instance"]: r["metric"].get("pod", "") for r in body.get("data", {}).get("result", [])
    }


def test_prometheus_scrapes_the_operator_and_a_server_at_their_pod_addresses(
    real_cluster: ClusterHandle, real_release: str, release_namespace: str, repository: Path, tmp_path: Path
) -> None:
    cluster, ns = real_cluster, release_namespace
    cluster.client.create(MODELSERVICE_RESOURCE(modelservice("scraped", repository)), namespace=ns)
    wait_ready(cluster, ns, "scraped")
    (server_ip,) = ready_pod_ips(cluster, ns, "scraped")
    # What the chart's PodMonitors select: the release's operator pods, the ModelService's servers.
    operators = [
        p
        for p in cluster.client.list(
            Pod,
            namespace=RELEASE_NAMESPACE,
            # The operator's pods, not the activator's (same release, component "activator").
            labels={"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "operator"},
        )
        if p.status and p.status.phase == "Running"
    ]
    servers = [
        p
        for p in cluster.client.list(Pod, namespace=ns, labels={naming.LABEL_MODELSERVICE: "scraped"})
        if p.status and p.status.podIP == server_ip
    ]
    jobs = [
        static_job("operator", operators, OPERATOR_METRICS_PORT),
        static_job("servers", servers, naming.HTTP_PORT),
    ]
    with prometheus(tmp_path, jobs) as url:
        scraped = wait_for(lambda: up_targets(url, "servers") or None, 90, "the server pod scraped")
        assert list(scraped) == [f"{server_ip}:{naming.HTTP_PORT}"]
        operator_up = wait_for(lambda: up_targets(url, "operator") or None, 90, "the operator pod scraped")
        assert sorted(operator_up) == sorted(
            f"{p.status.podIP}:{OPERATOR_METRICS_PORT}" for p in operators if p.status
        )
        # Series of both, as the dashboards read them.
        for job in ("servers", "operator"):
            query = f'count({{job="{job}", __name__=~"coxswain_.+"}})'
            body = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10).json()
            assert body["data"]["result"], (job, body)
