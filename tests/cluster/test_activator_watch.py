"""The activator's EndpointSlice list+watch against the real API server: a (re)listing is the
whole truth (a slice that went while no watch ran is forgotten), /readyz's `synced` comes only
after the first listing, and the watch then follows deletions. And its wake-up: a burst of
asks raises replicas 0 -> 1 with one ask to the API, and asks again only after its interval."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import Status
from lightkube.resources.discovery_v1 import EndpointSlice

from cluster_fixtures import ClusterHandle
from coxswain.activator.backends import CONTROLLER_MANAGER, Backends
from coxswain.activator.watch import Waker, _on_watch_error, watch_slices
from coxswain.kube import MODELSERVICE_RESOURCE
from coxswain.modelservice import naming
from operator_fixtures import free_port

pytestmark = pytest.mark.cluster


# Addresses from TEST-NET-1 (the API refuses loopback in a slice); nothing is ever sent to them.
def server_slice(ns: str, name: str, ip: str) -> dict[str, Any]:
    """What the endpointslice controller makes for a ready server pod of ModelService `digits`."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                naming.LABEL_SERVICE_NAME: "digits",
                naming.LABEL_MODELSERVICE: "digits",
                naming.LABEL_SLICE_MANAGED_BY: CONTROLLER_MANAGER,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


@pytest.fixture
async def aclient(cluster: ClusterHandle) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(config=KubeConfig.from_file(cluster.kubeconfig))
    yield client
    await client.close()


async def test_listing_replaces_stale_slices_and_synced_follows_it(
    cluster: ClusterHandle, namespace: str, aclient: AsyncClient
) -> None:
    cluster.client.create(from_dict(server_slice(namespace, "digits-live", "192.0.2.2")))
    backends = NotifyingBackends()
    synced = asyncio.Event()
    task = asyncio.create_task(watch_slices(aclient, backends, synced, [namespace]))
    try:
        await asyncio.wait_for(synced.wait(), 60)
        key = (namespace, "digits")
        # Ready only once listed: the existing slice is known the moment /readyz says ok.
        assert backends.addresses(key) == [("192.0.2.2", 8080)]

        # A slice the activator heard of but that was deleted during a watch gap (410 Gone):
        # the next listing drops it instead of holding requests for a dead pod.
        backends.update(server_slice(namespace, "digits-gone", "192.0.2.9"))
        assert ("192.0.2.9", 8080) in backends.addresses(key)
        backends.replace(
            namespace, [obj.to_dict() async for obj in aclient.list(EndpointSlice, namespace=namespace)]
        )
        assert backends.addresses(key) == [("192.0.2.2", 8080)]

        # The watch, started from the listing's resourceVersion, follows a deletion.
        cluster.client.delete(EndpointSlice, "digits-live", namespace=namespace)
        await asyncio.wait_for(_until_empty(backends, key), 60)
        assert backends.pick(key) is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class NotifyingBackends(Backends):
    """Backends that say when an event changed them, so the test waits on that."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def update(self, body: Any, deleted: bool = False) -> None:
        super().update(body, deleted)
        self.changed.set()


async def _until_empty(backends: NotifyingBackends, key: tuple[str, str]) -> None:
    while backends.addresses(key):
        backends.changed.clear()
        await backends.changed.wait()


def test_an_expired_watch_ends_so_the_slices_are_listed_again() -> None:
    gone = ApiError.__new__(ApiError)
    gone.status = Status(code=410, reason="Expired", message="too old resource version")
    assert _on_watch_error(gone, 1).action.name == "RAISE"
    assert _on_watch_error(ConnectionError("reset"), 1).action.name == "RETRY"


def test_the_activator_exits_non_zero_when_its_watch_dies(
    cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    # A ServiceAccount without any Role: listing EndpointSlices is forbidden (403), the watch
    # ends for good, and the process must say so and exit non-zero (the pod restarts).
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = cluster.kubectl("create", "token", "nobody", "-n", namespace).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": "nobody", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "nobody"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(admin))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "coxswain",
            "activator",
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--admin-port",
            "0",
        ],
        env={**cluster.env(), "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "the EndpointSlice watch ended" in done.stderr and "RBAC" in done.stderr


async def test_a_burst_of_wakes_asks_the_api_once_and_again_only_after_the_interval(
    cluster: ClusterHandle, namespace: str, aclient: AsyncClient
) -> None:
    spec = {
        "model": {"uri": "pvc://models/digits"},
        "repository": {"hostPath": {"path": "/var/lib/coxswain/models"}},
        "resources": {"cpu": "500m", "memory": "512Mi"},
        "versions": {"stable": "v1"},
        "replicas": 0,
        "autoscaling": {"minReplicas": 0, "maxReplicas": 2},
    }
    body = {"metadata": {"name": "digits"}, "spec": spec}
    await aclient.create(MODELSERVICE_RESOURCE(body), namespace=namespace)
    now = [100.0]
    waker = Waker(aclient, clock=lambda: now[0], min_interval=1.0)
    key = (namespace, "digits")

    asks = {waker.wake(key) for _ in range(100)}
    assert len(asks) == 1
    (ask,) = asks
    assert await ask is True  # raised 0 -> 1
    scale = await aclient.get(MODELSERVICE_RESOURCE.Scale, "digits", namespace=namespace)
    assert scale.spec is not None and scale.spec.replicas == 1

    now[0] += 0.5
    assert waker.wake(key) is ask  # within the interval: the last answer stands
    now[0] += 0.5
    again = waker.wake(key)
    assert again is not ask
    assert await again is False  # replicas are 1 already: nothing written

    # An ask cancelled before it ran has no end: the next wake asks again instead of failing.
    now[0] += 5
    cancelled = waker.wake(key)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert cancelled.cancelled()
    fresh = waker.wake(key)
    assert fresh is not cancelled and await fresh is False
