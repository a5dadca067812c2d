"""Fixtures for tests that need the local control plane (marker `cluster`).

`cluster` (session): reuses a healthy cluster in $COXSWAIN_CLUSTER_DIR (default
~/.cache/coxswain/cluster) or starts one, applies every CRD in crds/ and waits until they
are Established. A cluster this session started is stopped at the end, unless
COXSWAIN_KEEP_CLUSTER=1 or another test session still uses it; a cluster that was already up
is left running. `kueue` (session): the same cluster with Kueue added. `namespace` (function): a fresh namespace per test, deleted afterwards.

Loaded from tests/conftest.py with `pytest_plugins`.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from coxswain.devcluster import DevCluster
from coxswain.devcluster.bootstrap import make_client
from coxswain.devcluster.crds import apply_crds, wait_established

REPO = Path(__file__).resolve().parents[1]
CRDS_DIR = REPO / "crds"
KEEP_ENV = "COXSWAIN_KEEP_CLUSTER"
# How long a test waits for the controllers, scheduler or kwok to act. They take well under a
# second when idle; 2 cores shared with torch training and Go builds stretch that a lot.
SETTLE = 60.0

T = TypeVar("T")


@dataclass
class ClusterHandle:
    """What a test gets: the admin kubeconfig, the binaries (kubectl, helm) and a client."""

    kubeconfig: Path
    bin_dir: Path
    client: Client
    crds: list[str]

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (kubectl, helm, the operator) aimed at this cluster."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
        }

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            check=check,
            timeout=60,
        )


def wait_for(probe: Callable[[], T | None], timeout: float = SETTLE, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; fail the test with `what` otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except ApiError as e:
            last = e
        if last and not isinstance(last, ApiError):
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    dev = DevCluster()
    marker = dev.add_user()
    started_here = not dev.is_healthy()
    try:
        state = dev.up()
        client = make_client(dev.paths.kubeconfig)
        crds = apply_crds(client, CRDS_DIR)
        wait_established(client, crds)
        yield ClusterHandle(kubeconfig=dev.paths.kubeconfig, bin_dir=state.bin_dir, client=client, crds=crds)
    finally:
        marker.unlink(missing_ok=True)
        keep = os.environ.get(KEEP_ENV, "") not in ("", "0")
        if started_here and not keep and not dev.other_users():
            dev.down()


@pytest.fixture(scope="session")
def kueue(cluster: ClusterHandle) -> ClusterHandle:
    """`cluster` with a real Kueue running in it (its CRDs, webhooks and the kwok
    ResourceFlavors; see coxswain.devcluster.kueue). Built from the Go module proxy the first
    time on a machine (minutes); stopped with the cluster."""
    DevCluster().up(kueue=True, timeout=300)
    return cluster


@pytest.fixture
def namespace(cluster: ClusterHandle) -> Iterator[str]:
    """A namespace of its own for one test (tests may share the cluster with other sessions)."""
    yield from fresh_namespace(cluster)


def fresh_namespace(cluster: ClusterHandle, prefix: str = "t-") -> Iterator[str]:
    """Make a namespace, yield its name once pods can be made in it, then delete it."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    client = cluster.client
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_for(
        lambda: client.get(ServiceAccount, "default", namespace=name),
        SETTLE,
        f"ServiceAccount {name}/default",
    )
    yield name
    client.delete(Namespace, name)
