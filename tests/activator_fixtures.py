"""The activator (coxswain.activator) as a host process for the scale-from-zero tests, the
Service + EndpointSlice the chart and the endpointslice controller would give it, and what
those tests read back: the operator's slice routing a service to it, and the server pods."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Pod
from lightkube.resources.discovery_v1 import EndpointSlice

from cluster_fixtures import ClusterHandle
from coxswain.modelservice import naming
from operator_fixtures import free_port


class ActivatorProcess:
    """`coxswain activator run` as a host process, listening on `host`."""

    def __init__(self, cluster: ClusterHandle, host: str = "127.0.0.1", hold_timeout: float = 120) -> None:
        self.host = host
        self.port, self.grpc_port, self.admin_port = free_port(), free_port(), free_port()
        self.log_path = Path(tempfile.mkdtemp(prefix="coxswain-activator-")) / "activator.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "coxswain",
                    "activator",
                    "run",
                    "--host",
                    host,
                    "--port",
                    str(self.port),
                    "--grpc-port",
                    str(self.grpc_port),
                    "--admin-port",
                    str(self.admin_port),
                    "--hold-timeout",
                    str(hold_timeout),
                ],
                env=cluster.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://{self.host}:{self.admin_port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str, ns: str, ms: str) -> float:
        text = httpx.get(f"http://{self.host}:{self.admin_port}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and f'namespace="{ns}"' in line and f'modelservice="{ms}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def activator_service(cluster: ClusterHandle, ns: str, ip: str, port: int, grpc_port: int) -> None:
    """What the chart makes: the activator's Service, labelled so the operator finds it, and
    (what the endpointslice controller would derive from the activator's pods) its slice."""
    labels = {naming.LABEL_ACTIVATOR: "true", naming.LABEL_SLICES: "true"}
    cluster.client.create(
        from_dict(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "coxswain-activator", "namespace": ns, "labels": labels},
                "spec": {"ports": [{"name": "http", "port": port}, {"name": "grpc", "port": grpc_port}]},
            }
        )
    )
    cluster.client.create(
        from_dict(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "coxswain-activator-1",
                    "namespace": ns,
                    "labels": {**labels, naming.LABEL_SERVICE_NAME: "coxswain-activator"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
                "ports": [
                    {"name": "http", "port": port, "protocol": "TCP"},
                    {"name": "grpc", "port": grpc_port, "protocol": "TCP"},
                ],
            }
        )
    )


def server_pods(cluster: ClusterHandle, ns: str, name: str) -> list[Pod]:
    return list(cluster.client.list(Pod, namespace=ns, labels={naming.LABEL_MODELSERVICE: name}))


def activator_slice(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any] | None:
    """The operator's EndpointSlice routing ModelService `name`'s Service to the activator."""
    for s in cluster.client.list(EndpointSlice, namespace=ns, labels={naming.LABEL_SERVICE_NAME: name}):
        if (s.metadata.labels or {}).get(naming.LABEL_SLICE_MANAGED_BY) == naming.SLICE_MANAGER:
            return dict(s.to_dict())
    return None
