"""What makes a fresh control plane usable: its fake nodes, and the waits for the default
namespace's ServiceAccount (no pod can be created before it exists) and for Ready nodes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import httpx2
from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Namespace, Node, ServiceAccount

from coxswain.devcluster.kwok_nodes import NODE_POOL_LABEL, NodePool


class BootstrapError(RuntimeError):
    """The API server is up but the cluster did not become usable in time."""


def make_client(kubeconfig: Path, timeout: float = 30.0) -> Client:
    """A lightkube client for the cluster's admin kubeconfig."""
    return Client(
        config=KubeConfig.from_file(str(kubeconfig)),
        timeout=httpx2.Timeout(timeout),
        field_manager="coxswain-dev",
    )


def create_nodes(client: Client, pools: Iterable[NodePool]) -> list[str]:
    """Create every pool's Node objects (an existing one is left as it is). Returns the names."""
    names: list[str] = []
    for pool in pools:
        for manifest in pool.nodes():
            names.append(manifest["metadata"]["name"])
            try:
                client.create(from_dict(manifest))
            except ApiError as e:
                if e.status.code != 409:
                    raise
    return names


def wait_for_default_service_account(client: Client, timeout: float) -> None:
    """Wait until kube-controller-manager has made `default/default`; before that the
    ServiceAccount admission plugin refuses every pod in the namespace."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            client.get(Namespace, "default")
            client.get(ServiceAccount, "default", namespace="default")
            return
        except ApiError as e:
            last = e.status.message or str(e)
        time.sleep(0.25)
    raise BootstrapError(
        f"the default ServiceAccount did not appear within {timeout:.0f} s ({last}); "
        "kube-controller-manager's serviceaccount controller makes it: see its log"
    )


def _ready(node: Node) -> bool:
    conditions = node.status.conditions if node.status and node.status.conditions else []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def wait_for_nodes_ready(client: Client, names: list[str], timeout: float) -> None:
    """Wait until kwok has initialised every named node (Ready=True)."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for node in client.list(Node, labels={NODE_POOL_LABEL: None}):
            if node.metadata and node.metadata.name in pending and _ready(node):
                pending.discard(node.metadata.name)
        if pending:
            time.sleep(0.25)
    if pending:
        raise BootstrapError(
            f"nodes {sorted(pending)} are not Ready after {timeout:.0f} s; kwok initialises them: see its log"
        )


def count_nodes(client: Client) -> dict[str, int]:
    """Ready nodes per pool label value (nodes without the label count as 'other')."""
    counts: dict[str, int] = {}
    for node in client.list(Node):
        labels = (node.metadata.labels if node.metadata else None) or {}
        pool = labels.get(NODE_POOL_LABEL, "other")
        if _ready(node):
            counts[pool] = counts.get(pool, 0) + 1
    return counts
