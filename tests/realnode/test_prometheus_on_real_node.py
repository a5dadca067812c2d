"""Prometheus finds the operator's pod and a model server's pod through the API server
(kubernetes_sd, role pod, the way the chart's PodMonitors select them) and scrapes them at their
real pod addresses on the real node: the operator's /metrics and the server's /metrics."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
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

pytestmark = [
    pytest.mark.realnode,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="prometheus missing: dev/install-system-deps.sh"
    ),
]


def pod_job(name: str, kubeconfig: Path, port_name: str, keep_label: str | None = None) -> dict[str, Any]:
    relabel: list[dict[str, Any]] = [
        {
            "source_labels": ["__meta_kubernetes_pod_container_port_name"],
            "regex": port_name,
            "action": "keep",
        },
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    if keep_label:
        relabel.insert(0, {"source_labels": [keep_label], "regex": ".+", "action": "keep"})
    return {
        "job_name": name,
        "scrape_interval": "2s",
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
        "relabel_configs": relabel,
    }


@pytest.fixture
def prometheus(real_cluster: ClusterHandle, tmp_path: Path) -> Iterator[str]:
    label = "__meta_kubernetes_pod_label_" + "".join(
        c if c.isalnum() else "_" for c in naming.LABEL_MODELSERVICE
    )
    config = {
        "global": {"scrape_interval": "2s"},
        "scrape_configs": [
            pod_job(
                "operator",
                real_cluster.kubeconfig,
                "metrics",
                "__meta_kubernetes_pod_label_app_kubernetes_io_instance",
            ),
            pod_job("servers", real_cluster.kubeconfig, "http", label),
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
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
    real_cluster: ClusterHandle, real_release: str, release_namespace: str, repository: Path, prometheus: str
) -> None:
    cluster, ns = real_cluster, release_namespace
    cluster.client.create(MODELSERVICE_RESOURCE(modelservice("scraped", repository)), namespace=ns)
    wait_ready(cluster, ns, "scraped")
    (server_ip,) = ready_pod_ips(cluster, ns, "scraped")
    operator_ips = {
        p.status.podIP
        for p in cluster.client.list(
            Pod,
            namespace=RELEASE_NAMESPACE,
            # The operator's pods, not the activator's (same release, component "activator").
            labels={"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "operator"},
        )
        if p.status and p.status.podIP and p.status.phase == "Running"
    }
    servers = wait_for(
        lambda: (
            {i: p for i, p in up_targets(prometheus, "servers").items() if i.startswith(f"{server_ip}:")}
            or None
        ),
        90,
        "the server pod scraped",
    )
    assert list(servers) == [f"{server_ip}:{naming.HTTP_PORT}"]
    operators = wait_for(lambda: up_targets(prometheus, "operator") or None, 90, "the operator pod scraped")
    assert {i.rsplit(":", 1)[0] for i in operators} <= operator_ips and operators
    # Series of both, as the dashboards read them.
    query = f'count({{job="servers", instance="{server_ip}:{naming.HTTP_PORT}", __name__=~"coxswain_.+"}})'
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10).json()
    assert body["data"]["result"], body
    body = httpx.get(
        f"{prometheus}/api/v1/query",
        params={"query": 'count({job="operator", __name__=~"coxswain_.+"})'},
        timeout=10,
    ).json()
    assert body["data"]["result"], body
