"""The admin kubeconfig works for the tools users reach for, and the servers report the
pinned versions (helm's kubeVersion checks read the server's version)."""

from __future__ import annotations

import json
import subprocess

import pytest

from cluster_fixtures import REPO, ClusterHandle

pytestmark = pytest.mark.cluster


def pinned(name: str) -> str:
    for line in (REPO / "dev" / "versions.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{name} is not in dev/versions.env")


def test_kubectl_reaches_the_api_server_of_the_pinned_version(cluster: ClusterHandle) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == pinned("KUBE_VERSION")
    assert version["clientVersion"]["gitVersion"] == pinned("KUBE_VERSION")


def test_helm_uses_the_same_kubeconfig(cluster: ClusterHandle) -> None:
    helm = str(cluster.bin_dir / "helm")
    version = subprocess.run(
        [helm, "version", "--short"], capture_output=True, text=True, check=True, env=cluster.env()
    )
    assert version.stdout.startswith(pinned("HELM_VERSION"))
    listed = subprocess.run(
        [helm, "list", "--all-namespaces", "-o", "json"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list)


def test_controllers_act_as_their_own_service_accounts(cluster: ClusterHandle) -> None:
    """--use-service-account-credentials: each controller has a token-backed identity, so RBAC
    for the built-in controllers is exercised as on kubeadm clusters."""
    accounts = cluster.kubectl("get", "serviceaccounts", "-n", "kube-system", "-o", "name").stdout.split()
    for controller in ("deployment-controller", "job-controller", "generic-garbage-collector"):
        assert f"serviceaccount/{controller}" in accounts
