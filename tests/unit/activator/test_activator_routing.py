"""The activator's pure parts: which ModelService a Host names, which pods are ready."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coxswain.activator.backends import Backends, ready_addresses, slice_key
from coxswain.activator.routing import UnknownHost, modelservice_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "host",
    [
        "digits.ml.svc.cluster.local",
        "digits.ml.svc.cluster.local:80",
        "digits.ml.svc",
        "digits.ml",
        "Digits.ML.",
    ],
)
def test_the_service_dns_name_names_the_modelservice(host: str) -> None:
    assert modelservice_of(host) == ("ml", "digits")


@pytest.mark.parametrize("host", ["digits", "10.0.0.1", "10.0.0.1:80", "[::1]:80", "", "a.b.c.d"])
def test_a_host_without_a_namespace_is_refused_with_the_forms_that_work(host: str) -> None:
    with pytest.raises(UnknownHost, match="Host"):
        modelservice_of(host)


def server_slice(
    name: str, *endpoints: tuple[str, bool | None], manager: str = "endpointslice-controller.k8s.io"
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": {
                "kubernetes.io/service-name": "digits",
                "coxswain.dev/modelservice": "digits",
                "endpointslice.kubernetes.io/managed-by": manager,
            },
        },
        "ports": [{"name": "grpc", "port": 8081}, {"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": [ip], **({"conditions": {"ready": r}} if r is not None else {})}
            for ip, r in endpoints
        ],
    }


def test_ready_endpoints_on_the_http_port() -> None:
    body = server_slice("s", ("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.3", None))
    assert slice_key(body) == ("ml", "digits")
    assert ready_addresses(body) == [("10.0.0.1", 8080), ("10.0.0.3", 8080)]


def test_the_operators_own_slice_listing_the_activator_is_ignored() -> None:
    assert slice_key(server_slice("a", ("10.9.0.1", True), manager="coxswain-operator")) is None


async def test_a_waiter_wakes_when_the_first_pod_turns_ready_and_picks_round_robin() -> None:
    backends = Backends()
    backends.update(server_slice("s", ("10.0.0.1", False)))
    waiter = asyncio.create_task(backends.wait_ready(("ml", "digits")))
    await asyncio.sleep(0)
    assert not waiter.done()
    backends.update(server_slice("s", ("10.0.0.1", True), ("10.0.0.2", True)))
    await asyncio.wait_for(waiter, 1)
    picks = {backends.pick(("ml", "digits")) for _ in range(4)}
    assert picks == {("10.0.0.1", 8080), ("10.0.0.2", 8080)}
    backends.update(server_slice("s"), deleted=True)
    assert backends.pick(("ml", "digits")) is None
