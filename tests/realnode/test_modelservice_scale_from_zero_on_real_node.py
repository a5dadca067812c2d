"""Scale from zero on the real node: the server image in containerd, kube-proxy routing the
ModelService's ClusterIP, the operator and the activator as host processes (the activator
listens on the host bridge's address, inside the cluster's own network, and its slice lists
that address), and a burst of 100 requests from a client pod on the node to the Service's
DNS name (CoreDNS, then kube-proxy's ClusterIP rules).

The figure: first answer against the server pod's own start and readiness, i.e. "pod start
+ model load + 1 s".
"""

from __future__ import annotations

import collections
import json
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lightkube.codecs import from_dict
from lightkube.models.core_v1 import PodStatus
from lightkube.resources.core_v1 import Pod

from activator_fixtures import ActivatorProcess, activator_service, activator_slice, server_pods
from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster import DevCluster
from coxswain.devcluster.realnode import REAL_NODE_LABEL
from coxswain.kube import MODELSERVICE_RESOURCE
from coxswain.modelservice import naming
from operator_fixtures import OperatorProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modelservice"))

from serving_harness import BODY, INFER_PATH, write_repository

pytestmark = pytest.mark.realnode

# The gRPC client pod's script (the server image has tritonclient.grpc): one ModelInfer to the
# Service's DNS name; prints the output's shape and the seconds it took.
GRPC_CLIENT = """
import sys, time
import numpy as np
import tritonclient.grpc as triton
target, model = sys.argv[1], sys.argv[2]
began = time.monotonic()
client = triton.InferenceServerClient(target)
x = triton.InferInput("input", [1, 64], "FP32")
x.set_data_from_numpy(np.full((1, 64), 0.5, dtype=np.float32))
shape = client.infer(model, [x], client_timeout=300).as_numpy("logits").shape
print("GRPC", str(shape).replace(" ", ""), f"{time.monotonic() - began:.2f}s", flush=True)
"""

IMAGES_CACHE = Path.home() / ".cache" / "coxswain" / "images"
BURST = 100
DELAY = 10

# The client pod's script (the server image's Python, standard library only): 100 requests
# at once to the Service; prints when it sent them and each code and duration (for a failure,
# the error and the local port, to find the connection in the activator's log). It first
# resolves the Service's name once, as a client with a resolver cache does, and waits until
# kube-proxy routes the new Service: in two runs 2 of 100 requests failed without reaching
# the activator, which a burst straddling kube-proxy's first sync of the Service would
# explain (connections refused before it, taken after). Holding requests is what this test is about;
# how soon kube-proxy learns of a new Service is not ours.
CLIENT = """
import http.client, json, socket, sys, time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit
url, n, body = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
parts = urlsplit(url)
for attempt in range(30):
    try:
        ip = socket.getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_STREAM)[0][4][0]
        break
    except OSError:
        time.sleep(1)
# kube-proxy programs a new Service a moment after the API has it: wait until a connection
# is taken (the activator accepts it; no request is sent, so nothing wakes) before the burst.
for attempt in range(60):
    try:
        socket.create_connection((ip, parts.port or 80), timeout=2).close()
        break
    except OSError:
        time.sleep(0.5)
print("ROUTED after", attempt, "refused connections", flush=True)
def one(_):
    headers = {"Content-Type": "application/json", "Host": parts.netloc}
    began = time.monotonic()
    c = http.client.HTTPConnection(ip, parts.port or 80, timeout=300)
    local = None
    try:
        c.connect()
        local = c.sock.getsockname()[1]
        c.request("POST", parts.path, body=body, headers=headers)
        code = c.getresponse().status
    except OSError as e:
        code = f"{e!r} (local port {local})"
    return code, time.monotonic() - began
sent = time.time()
with ThreadPoolExecutor(n) as pool:
    results = list(pool.map(one, range(n)))
print("RESULT " + json.dumps({"sent": sent, "results": results}), flush=True)
"""


def _blob(layout: Path, digest: str) -> Path:
    algo, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algo / hexdigest


def _blobs(layout: Path, digest: str) -> list[str] | None:
    """The manifest (or index) and every blob it names, or None when the layout lacks one."""
    path = _blob(layout, digest)
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    found = [digest]
    if "config" in doc:
        found += [doc["config"]["digest"], *(layer["digest"] for layer in doc.get("layers", []))]
    for child in doc.get("manifests", []):
        below = _blobs(layout, child["digest"])
        if below is None:
            return None
        found += below
    return found if all(_blob(layout, d).exists() for d in found) else None


def server_only_layout(tmp: Path) -> tuple[Path, str] | None:
    """An OCI layout holding only the newest server image (its blobs hard-linked):
    the cache's layouts hold the 6 GB trainer image too, which this test does not need."""
    for index in sorted(IMAGES_CACHE.glob("oci-*/index.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        for manifest in json.loads(index.read_text()).get("manifests", []):
            name = (manifest.get("annotations") or {}).get("io.containerd.image.name", "")
            blobs = _blobs(index.parent, manifest["digest"]) if "/server:" in name else None
            if blobs is not None:
                out = tmp / "server-layout"
                (out / "blobs" / "sha256").mkdir(parents=True)
                (out / "oci-layout").write_text((index.parent / "oci-layout").read_text())
                (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
                for digest in set(blobs):
                    target = _blob(out, digest)
                    try:
                        target.hardlink_to(_blob(index.parent, digest))
                    except OSError:
                        shutil.copyfile(_blob(index.parent, digest), target)
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


@pytest.fixture
def host_activator(
    real_cluster: ClusterHandle, real_dev: DevCluster
) -> Iterator[tuple[ActivatorProcess, str]]:
    nodes = real_dev.real_nodes()
    assert nodes is not None
    act = ActivatorProcess(real_cluster, host=nodes.gateway_ip)
    try:
        wait_for(act.ready, 60, "the activator's EndpointSlice watch")
        yield act
    finally:
        act.stop()
        print(f"activator log: {act.log_path}")


def replicas(cluster: ClusterHandle, ns: str, name: str) -> int | None:
    return dict(cluster.client.get(MODELSERVICE_RESOURCE, name, namespace=ns))["spec"].get("replicas")


def test_a_burst_at_zero_replicas_on_the_real_node_is_answered(
    real_cluster: ClusterHandle,
    server_image: str,
    real_host_operator: OperatorProcess,
    real_op_namespace: str,
    host_activator: ActivatorProcess,
    tmp_path: Path,
) -> None:
    activator = host_activator
    ns, name = real_op_namespace, "digits"
    activator_service(real_cluster, ns, activator.host, activator.port, activator.grpc_port)
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

    client_pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "burst"},
        "spec": {
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "burst",
                    "image": server_image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", CLIENT],
                    "args": [
                        f"http://{name}.{ns}.svc.cluster.local{INFER_PATH}",
                        str(BURST),
                        json.dumps(BODY),
                    ],
                    "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                }
            ],
        },
    }
    real_cluster.client.create(from_dict(client_pod), namespace=ns)

    def finished(pod: str = "burst") -> str | None:
        phase = (real_cluster.client.get(Pod, pod, namespace=ns).status or PodStatus()).phase
        return phase if phase in ("Succeeded", "Failed") else None

    assert wait_for(finished, 400, "the burst pod") == "Succeeded"
    logged = list(real_cluster.client.log("burst", namespace=ns))
    print("burst client:", next((x.strip() for x in logged if x.startswith("ROUTED ")), "no ROUTED line"))
    line = next(x for x in logged if x.startswith("RESULT "))
    outcome = json.loads(line.removeprefix("RESULT "))
    sent = datetime.fromtimestamp(outcome["sent"], UTC)
    codes = [c for c, _ in outcome["results"]]
    times = [t for _, t in outcome["results"]]
    failed = [(c, round(t, 2)) for c, t in outcome["results"] if c != 200]
    assert codes == [200] * BURST, (collections.Counter(map(str, codes)), failed)
    assert activator.metric("coxswain_activator_wakeups_total", ns, name) == 1

    (pod,) = server_pods(real_cluster, ns, name)
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
    # The slice comes in the pass that scales to zero, while the last pod still drains (a call
    # then is answered by it, as it should be): "at zero" is once that pod is gone.
    wait_for(lambda: not server_pods(real_cluster, ns, name), 120, "the last server pod gone")

    # At zero again: a gRPC call to the Service's DNS name (kube-proxy sends the grpc port to
    # the activator's) is held, wakes the service and is answered by the pod.
    grpc_pod = {
        **client_pod,
        "metadata": {"name": "grpc-call"},
        "spec": {
            **client_pod["spec"],
            "containers": [
                {
                    **client_pod["spec"]["containers"][0],
                    "name": "grpc-call",
                    "command": ["python", "-c", GRPC_CLIENT],
                    "args": [f"{name}.{ns}.svc.cluster.local:{naming.GRPC_PORT}", "digits"],
                }
            ],
        },
    }
    real_cluster.client.create(from_dict(grpc_pod), namespace=ns)
    assert wait_for(lambda: finished("grpc-call"), 400, "the gRPC client pod") == "Succeeded"
    line = next(x for x in real_cluster.client.log("grpc-call", namespace=ns) if x.startswith("GRPC "))
    print(f"real node, gRPC call at zero replicas: {line.strip()}")
    assert line.split()[1] == "(1,10)"
    assert activator.metric("coxswain_activator_wakeups_total", ns, name) == 2
    assert activator.metric("coxswain_activator_grpc_connections_total", ns, name) == 1
