"""Scale from zero on the node agent: a `minReplicas: 0` ModelService at zero replicas,
a real activator process, the real operator and real `coxswain-server` pods.

The agent has no kube-proxy, so the test plays its part: while the operator's EndpointSlice
lists the activator under the service's Service, the client's requests go to the activator
(with the Host header a client calling the Service's DNS name sends). The activator's own
Service and slice are made by hand here (the chart makes them on a cluster); the address in
that slice is a documentation address (RFC 5737) nothing is ever sent to.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton

from activator_fixtures import ActivatorProcess, activator_service, activator_slice, server_pods
from agent_fixtures import AgentProcess
from cluster_fixtures import ClusterHandle, wait_for
from coxswain.kube import MODELSERVICE_RESOURCE
from coxswain.modelservice import naming
from operator_fixtures import OperatorProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modelservice"))

from serving_harness import BODY, INFER_PATH, write_repository

pytestmark = pytest.mark.e2e

ACTIVATOR_IP = "192.0.2.10"
BURST = 100
DELAY = 10


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_repository(root)
    root.chmod(0o755)
    return root


@pytest.fixture
def activator(cluster: ClusterHandle) -> Iterator[ActivatorProcess]:
    act = ActivatorProcess(cluster)
    try:
        wait_for(act.ready, 60, "the activator's EndpointSlice watch")
        yield act
    finally:
        act.stop()
        print(f"activator log: {act.log_path}")


def get(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.client.get(MODELSERVICE_RESOURCE, name, namespace=ns))


def report_times(cluster: ClusterHandle, ns: str, name: str, sent: datetime, times: list[float]) -> None:
    """The figures: first answer against the pod's own start and readiness (1 s resolution)."""
    (pod,) = server_pods(cluster, ns, name)
    assert pod.metadata is not None and pod.status is not None
    created = pod.metadata.creationTimestamp
    ready_at = next(c.lastTransitionTime for c in pod.status.conditions or [] if c.type == "Ready")
    assert created is not None and ready_at is not None
    first = min(times)
    print(
        f"scale from zero: burst sent -> pod created {(created - sent).total_seconds():.1f} s, "
        f"-> pod Ready {(ready_at - sent).total_seconds():.1f} s; first answer {first:.2f} s, "
        f"last {max(times):.2f} s; first answer - pod Ready "
        f"{first - (ready_at - sent).total_seconds():.2f} s (timestamps in whole seconds)"
    )


async def burst(port: int, host: str, n: int) -> tuple[list[int], list[float]]:
    """n requests at once; their codes and seconds to each answer."""
    started = time.monotonic()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Host": host},
        timeout=180,
        limits=httpx.Limits(max_connections=n),
    ) as client:

        async def one() -> tuple[int, float]:
            r = await client.post(INFER_PATH, json=BODY)
            return r.status_code, time.monotonic() - started

        results = await asyncio.gather(*(one() for _ in range(n)))
    return [c for c, _ in results], [t for _, t in results]


def test_a_burst_at_zero_replicas_is_held_answered_and_the_service_goes_back_to_zero(
    cluster: ClusterHandle,
    agent: AgentProcess,
    operator: OperatorProcess,
    op_namespace: str,
    repository: Path,
    activator: ActivatorProcess,
) -> None:
    ns, name = op_namespace, "digits"
    activator_service(cluster, ns, ACTIVATOR_IP, activator.port, activator.grpc_port)
    spec = {
        "model": {"uri": f"file://{repository}/digits"},
        "repository": {"hostPath": {"path": str(repository)}},
        "resources": {"cpu": "1", "memory": "1Gi"},
        "nodeSelector": agent.selector,
        "versions": {"stable": "v1"},
        "replicas": 0,
        "autoscaling": {
            "minReplicas": 0,
            "maxReplicas": 2,
            "target": {"metric": "inflight", "value": 200},
            "scaleDownDelaySeconds": DELAY,
        },
    }
    body: dict[str, Any] = {"metadata": {"name": name}, "spec": spec}
    cluster.client.create(MODELSERVICE_RESOURCE(body), namespace=ns)
    # At zero: the Service's extra slice lists the activator, and Ready says how it wakes.
    wait_for(lambda: activator_slice(cluster, ns, name) is not None, 60, "the activator's slice")
    held = activator_slice(cluster, ns, name)
    assert held is not None and [e["addresses"] for e in held["endpoints"]] == [[ACTIVATOR_IP]]
    ready = next(c for c in get(cluster, ns, name)["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ScaledToZero" and "activator" in ready["message"]

    sent = datetime.now(UTC)
    codes, times = asyncio.run(burst(activator.port, f"{name}.{ns}.svc.cluster.local", BURST))
    answered, answered_at = time.monotonic(), datetime.now(UTC)
    assert codes == [200] * BURST, sorted(set(codes))
    report_times(cluster, ns, name, sent, times)
    assert activator.metric("coxswain_activator_wakeups_total", ns, name) == 1
    assert activator.metric("coxswain_activator_requests_total", ns, name) == BURST

    # A ready pod: the Service goes straight to the pods again.
    wait_for(lambda: activator_slice(cluster, ns, name) is None, 60, "the activator's slice removed")
    # Idle: back to zero after the delay, and the activator routes again.
    wait_for(lambda: get(cluster, ns, name)["spec"].get("replicas") == 0, DELAY + 60, "scale to zero")
    print(f"last answer -> replicas 0: {time.monotonic() - answered:.1f} s (scaleDownDelaySeconds {DELAY})")
    decision = get(cluster, ns, name)["status"]["lastScaleDecision"]
    assert (decision["from"], decision["to"]) == (1, 0)
    assert f"scaleDownDelaySeconds {DELAY}" in decision["reason"]
    # Not before the delay had passed since the last request (status times are whole seconds).
    decided = datetime.fromisoformat(decision["time"].replace("Z", "+00:00"))
    assert (decided - answered_at).total_seconds() >= DELAY - 1, (decided, answered_at)
    wait_for(lambda: activator_slice(cluster, ns, name) is not None, 120, "the activator's slice again")
    # The slice comes in the pass that scales to zero, while the last pod still drains (a call
    # then is answered by it, as it should be): "at zero" is once that pod is gone.
    wait_for(lambda: not server_pods(cluster, ns, name), 120, "the last server pod gone")
    held = activator_slice(cluster, ns, name)
    assert held is not None and {p["name"] for p in held["ports"]} == {"http", "grpc"}

    # At zero again: a gRPC call (a channel made for the Service's DNS name) is held too.
    began = time.monotonic()
    client = triton.InferenceServerClient(
        url=f"127.0.0.1:{activator.grpc_port}",
        channel_args=[("grpc.default_authority", f"{name}.{ns}.svc.cluster.local:{naming.GRPC_PORT}")],
    )
    try:
        x = np.full((1, 64), 0.5, dtype=np.float32)
        tensor = triton.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(name, [tensor], client_timeout=180)
        assert result.as_numpy("logits").shape == (1, 10)
        # The connection now leads to the pod: the next call is not held.
        assert client.is_model_ready(name)
    finally:
        client.close()
    print(f"gRPC call at zero answered in {time.monotonic() - began:.1f} s")
    assert activator.metric("coxswain_activator_wakeups_total", ns, name) == 2
    assert activator.metric("coxswain_activator_grpc_connections_total", ns, name) == 1
