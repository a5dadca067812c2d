"""Scale from zero on the real node: the server image in containerd, kube-proxy routing the
ModelService's ClusterIP, the operator and the activator as host processes (the activator
listens on the host bridge's address, inside the cluster's own network, and its slice lists
that address), and a burst of 100 requests sent from the node's network namespace to the
Service's ClusterIP with the Service's DNS name as Host: what a pod calling the service does.

The figure: first answer against the server pod's own start and readiness, i.e. "pod start
+ model load + 1 s".
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, Service, ServiceAccount
from lightkube.resources.discovery_v1 import EndpointSlice

from activator_fixtures import ActivatorProcess, activator_service
from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster import DevCluster
from coxswain.devcluster.realnode import REAL_NODE_LABEL
from coxswain.kube import MODELSERVICE_RESOURCE
from coxswain.modelservice import naming
from operator_fixtures import NAMESPACE_PREFIX, OperatorProcess, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modelservice"))

from serving_harness import BODY, INFER_PATH, write_repository

pytestmark = pytest.mark.realnode

IMAGES_CACHE = Path.home() / ".cache" / "coxswain" / "images"
BURST = 100
DELAY = 10

# Run inside the node's network namespace: 100 requests at once, codes and seconds to each.
CLIENT = """
import asyncio, json, sys, time
import httpx
url, host, n, body = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
async def main():
    t0 = time.monotonic()
    async with httpx.AsyncClient(headers={"Host": host}, timeout=300,
                                 limits=httpx.Limits(max_connections=n)) as c:
        async def one():
            r = await c.post(url, json=body)
            return r.status_code, time.monotonic() - t0
        print(json.dumps(await asyncio.gather(*(one() for _ in range(n)))))
asyncio.run(main())
"""


def server_only_layout(tmp: Path) -> tuple[Path, str] | None:
    """An OCI layout holding only the newest server image (its blobs linked, not copied):
    the cache's layouts hold the 6 GB trainer image too, which this test does not need."""
    for index in sorted(IMAGES_CACHE.glob("oci-*/index.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        for manifest in json.loads(index.read_text()).get("manifests", []):
            name = (manifest.get("annotations") or {}).get("io.containerd.image.name", "")
            if "/server:" in name:
                out = tmp / "server-layout"
                out.mkdir()
                (out / "oci-layout").write_text((index.parent / "oci-layout").read_text())
                (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
                (out / "blobs").symlink_to(index.parent / "blobs")
                return out, name
    return None


@pytest.fixture(scope="module")
def server_image(
    real_cluster: ClusterHandle, real_dev: DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> str:
    found = server_only_layout(tmp_path_factory.mktemp("images"))
    if found is None:
        pytest.skip(f"no server image layout under {IMAGES_CACHE}: run `make images` first")
    layout, name = found
    real_dev.load_image(layout)
    return name


@pytest.fixture(scope="module")
def real_operator(
    real_cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        real_cluster, tmp_path_factory.mktemp("operator") / "operator.log", free_port(), free_port()
    )
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(f"operator log: {op.log_path}")


@pytest.fixture
def op_ns(real_cluster: ClusterHandle) -> Iterator[str]:
    name = f"{NAMESPACE_PREFIX}{uuid.uuid4().hex[:8]}"
    client = real_cluster.client
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    wait_for(
        lambda: client.get(ServiceAccount, "default", namespace=name), 60, f"ServiceAccount {name}/default"
    )
    yield name
    client.delete(Namespace, name)


@pytest.fixture
def host_activator(
    real_cluster: ClusterHandle, real_dev: DevCluster
) -> Iterator[tuple[ActivatorProcess, str]]:
    nodes = real_dev.real_nodes()
    assert nodes is not None
    act = ActivatorProcess(real_cluster, host=nodes.gateway_ip)
    try:
        wait_for(act.ready, 60, "the activator's EndpointSlice watch")
        yield act, nodes.nodes[0].netns
    finally:
        act.stop()
        print(f"activator log: {act.log_path}")


def activator_slice(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any] | None:
    for s in cluster.client.list(EndpointSlice, namespace=ns, labels={naming.LABEL_SERVICE_NAME: name}):
        if (s.metadata.labels or {}).get(naming.LABEL_SLICE_MANAGED_BY) == naming.SLICE_MANAGER:
            return dict(s.to_dict())
    return None


def replicas(cluster: ClusterHandle, ns: str, name: str) -> int | None:
    return dict(cluster.client.get(MODELSERVICE_RESOURCE, name, namespace=ns))["spec"].get("replicas")


def test_a_burst_at_zero_replicas_on_the_real_node_is_answered(
    real_cluster: ClusterHandle,
    server_image: str,
    real_operator: OperatorProcess,
    op_ns: str,
    host_activator: tuple[ActivatorProcess, str],
    tmp_path: Path,
) -> None:
    activator, netns = host_activator
    ns, name = op_ns, "digits"
    activator_service(real_cluster, ns, activator.host, activator.port)
    repository = tmp_path / "models"
    write_repository(repository)
    for path in (tmp_path, repository, *repository.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    spec = {
        "image": server_image,
        "model": {"uri": f"file://{repository}/digits"},
        "repository": {"hostPath": {"path": str(repository)}},
        "resources": {"cpu": "1", "memory": "1Gi"},
        "nodeSelector": {REAL_NODE_LABEL: "true"},
        "versions": {"stable": "v1"},
        "replicas": 0,
        "autoscaling": {
            "minReplicas": 0,
            "maxReplicas": 1,
            "target": {"metric": "inflight", "value": 200},
            "scaleDownDelaySeconds": DELAY,
        },
    }
    body: dict[str, Any] = {"metadata": {"name": name}, "spec": spec}
    real_cluster.client.create(MODELSERVICE_RESOURCE(body), namespace=ns)
    wait_for(lambda: activator_slice(real_cluster, ns, name) is not None, 60, "the activator's slice")
    cluster_ip = real_cluster.client.get(Service, name, namespace=ns).spec.clusterIP  # type: ignore[union-attr]

    sent = datetime.now(UTC)
    out = subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{netns}",
            "--",
            sys.executable,
            "-c",
            CLIENT,
            f"http://{cluster_ip}{INFER_PATH}",
            f"{name}.{ns}.svc.cluster.local",
            str(BURST),
            json.dumps(BODY),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)
    codes = [c for c, _ in results]
    times = [t for _, t in results]
    assert codes == [200] * BURST, sorted(set(codes))
    assert activator.metric("coxswain_activator_wakeups_total", ns, name) == 1

    (pod,) = real_cluster.client.list(Pod, namespace=ns, labels={naming.LABEL_MODELSERVICE: name})
    assert pod.metadata is not None and pod.status is not None
    created = pod.metadata.creationTimestamp
    ready_at = next(c.lastTransitionTime for c in pod.status.conditions or [] if c.type == "Ready")
    started = next(
        (
            cs.state.running.startedAt
            for cs in pod.status.containerStatuses or []
            if cs.state and cs.state.running
        ),
        None,
    )
    assert created is not None and ready_at is not None
    since = lambda t: (t - sent).total_seconds()  # noqa: E731
    print(
        f"real node, scale from zero: burst sent -> pod created {since(created):.1f} s, container started "
        f"{since(started) if started else float('nan'):.1f} s, pod Ready {since(ready_at):.1f} s; first answer "
        f"{min(times):.2f} s, last {max(times):.2f} s; first answer - pod Ready {min(times) - since(ready_at):.2f} s "
        "(API timestamps in whole seconds)"
    )
    # Straight to the pod once it is ready; back to zero after the delay, the activator again.
    wait_for(lambda: activator_slice(real_cluster, ns, name) is None, 60, "the activator's slice removed")
    wait_for(lambda: replicas(real_cluster, ns, name) == 0, DELAY + 60, "scale to zero")
    wait_for(lambda: activator_slice(real_cluster, ns, name) is not None, 120, "the activator's slice again")
