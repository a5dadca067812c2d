"""Helpers the real-node tests share (the fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightkube.resources.core_v1 import Pod

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.realnode import REAL_NODE_LABEL
from coxswain.devimages import BuiltImages
from coxswain.kube import MODELSERVICE_RESOURCE
from coxswain.modelservice import naming

# The operator's release that the `real_release` fixture installs.
RELEASE = "coxswain"
RELEASE_NAMESPACE = "coxswain-system"
# The one namespace it watches (a list, not every namespace: the suites that run the operator
# as a host process use op-* namespaces, which it must leave alone).
E2E_NAMESPACE = "coxswain-e2e"


def image_ref(images: BuiltImages, kind: str) -> str:
    """The built image whose name has /<kind>: (operator, trainer, server)."""
    return next(image.ref for image in images.images if f"/{kind}:" in image.ref)


def operator_log(cluster: ClusterHandle, lines: int = 60) -> str:
    """The installed operator's last log lines, for assertion messages."""
    result = cluster.kubectl(
        "logs", "-n", RELEASE_NAMESPACE, f"deploy/{RELEASE}", f"--tail={lines}", check=False
    )
    return str(result.stdout + result.stderr)


NODE_SELECTOR = {REAL_NODE_LABEL: "true"}
# The real node has this machine's 2 CPUs: 3 servers and the operator must fit.
SERVER_RESOURCES = {"cpu": "500m", "memory": "1Gi"}


def modelservice(name: str, repository: Path, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": f"file://{repository}/digits"},
        "repository": {"hostPath": {"path": str(repository)}},
        "resources": SERVER_RESOURCES,
        "nodeSelector": NODE_SELECTOR,
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


def wait_ready(cluster: ClusterHandle, ns: str, name: str, timeout: float = 240) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        ms = get(cluster, ns, name)
        return ms if condition(ms, "Ready").get("status") == "True" else None

    try:
        found: dict[str, Any] = wait_for(ready, timeout, f"ModelService {name} Ready")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n{get(cluster, ns, name).get('status')}\n{operator_log(cluster)}"
        ) from exc
    return found
