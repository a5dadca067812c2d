"""Load step -> the builtin autoscaler's decision -> new replicas ready; idle -> scale-down.
Goal (issue 9): decision <= 10 s after the load step.

On the local cluster, with the real operator process: a ModelService (target 4 in-flight
requests per replica, 1..4 replicas, scale-down delay 20 s) gets a Deployment whose pods
kwok runs. kwok pods have no process behind their IP, so the bench starts a real
`coxswain-server` on a loopback address (127.0.0.2:8080) and points the first pod's
status.podIP at it: the operator then scrapes a real server's /metrics, exactly as it would
scrape a pod. wrk holds 16 requests in flight against that server (a load step from 0).

Measured in one run:
- decision: load step -> spec.replicas raised (the operator's scrape + decision + write);
- replicas: load step -> all 4 pods Ready (kwok's pods are Ready at once: this is the
  API server, Deployment and ReplicaSet controllers' share);
- server: a fresh `coxswain-server` process start -> ready (what a new pod adds on a real
  node: Python, torch and the model load and warm-up);
- scale-down: load stopped -> spec.replicas back to 1 (the delay is 20 s).
Baseline in the same run: the scrape interval (the floor of any decision time here).

Run: .venv/bin/python bench/modelservice_scaling.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount
from lightkube.types import PatchType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "modelservice"))

from serving_harness import BODY, INFER_PATH, LocalServer, write_repository, write_traffic  # noqa: E402

from coxswain.devcluster import DevCluster  # noqa: E402
from coxswain.devcluster.bootstrap import make_client  # noqa: E402
from coxswain.devcluster.crds import apply_crds, wait_established  # noqa: E402
from coxswain.devcluster.kwok_nodes import KWOK_NODE_SELECTOR  # noqa: E402
from coxswain.kube import MODELSERVICE_RESOURCE  # noqa: E402
from coxswain.modelservice import naming  # noqa: E402
from coxswain.modelservice.controller import SCRAPE_INTERVAL  # noqa: E402

GOAL_SECONDS = 10.0
DELAY = 20
PREFIX = "msbench-"


def wait(probe: Any, timeout: float, what: str, period: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except ApiError:
            value = None
        if value:
            return value
        time.sleep(period)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def modelservice(host_path: str) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "digits"},
        "spec": {
            "model": {"uri": "file:///models/digits"},
            "repository": {"hostPath": {"path": host_path}},
            "resources": {"cpu": "500m", "memory": "512Mi"},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "target": {"metric": "inflight", "value": 4},
                "scaleDownDelaySeconds": DELAY,
            },
            "versions": {"stable": "v1"},
            "nodeSelector": KWOK_NODE_SELECTOR,
        },
    }


def spec_replicas(client: Client, ns: str) -> int:
    return int(client.get(MODELSERVICE_RESOURCE, "digits", namespace=ns)["spec"].get("replicas") or 0)


def ready_replicas(client: Client, ns: str) -> int:
    return int(
        (client.get(MODELSERVICE_RESOURCE, "digits", namespace=ns).get("status") or {}).get("readyReplicas")
        or 0
    )


def main() -> int:
    dev = DevCluster()
    marker = dev.add_user()
    work = Path(tempfile.mkdtemp(prefix="ms-scaling-"))
    started_cluster = not dev.is_healthy()
    state = dev.up()
    client = make_client(dev.paths.kubeconfig)
    wait_established(client, apply_crds(client, REPO / "crds"))
    env = {
        **os.environ,
        "KUBECONFIG": str(dev.paths.kubeconfig),
        "PATH": f"{state.bin_dir}:{os.environ['PATH']}",
    }
    ns = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    op_log = open(work / "operator.log", "wb")  # noqa: SIM115 - closed below
    operator = subprocess.Popen(
        [sys.executable, "-m", "coxswain", "operator", "run", "--standalone", "-n", f"{PREFIX}*",
         "--metrics-port", "0", "--health-port", "0", "--allow-host-path", "--log-format", "full"],
        env=env, stdout=op_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    servers: list[LocalServer] = []
    load: subprocess.Popen[bytes] | None = None
    try:
        repo = write_repository(work / "repository")
        traffic = work / "traffic.json"
        write_traffic(traffic, {"v1": 100})
        first = LocalServer(repo, traffic, work / "server-0.log", host="127.0.0.2", port=naming.HTTP_PORT)
        servers.append(first)
        client.create(Namespace(metadata=ObjectMeta(name=ns)))
        wait(lambda: client.get(ServiceAccount, "default", namespace=ns), 30, "the default ServiceAccount")
        client.create(MODELSERVICE_RESOURCE(modelservice(str(repo))), namespace=ns)
        labels = {naming.LABEL_MODELSERVICE: "digits"}
        pod = wait(
            lambda: next(
                (
                    p
                    for p in client.list(Pod, namespace=ns, labels=labels)
                    if p.status and p.status.phase == "Running"
                ),
                None,
            ),
            60,
            "the first pod running",
        )
        server_ready = first.wait_ready()
        # The first pod's address becomes the real server's: the operator scrapes it.
        assert pod.metadata is not None and pod.metadata.name is not None
        client.patch(
            Pod.Status,
            pod.metadata.name,
            {"status": {"podIP": first.host, "podIPs": [{"ip": first.host}]}},
            namespace=ns,
            patch_type=PatchType.MERGE,  # replaces the list: one IP per family
        )
        wait(
            lambda: (client.get(MODELSERVICE_RESOURCE, "digits", namespace=ns).get("status") or {}).get(
                "load"
            ),
            30,
            "the operator reading the server's metrics",
            period=0.2,
        )
        assert spec_replicas(client, ns) == 1
        body = work / "body.json"
        import json

        body.write_text(json.dumps(BODY))
        lua = REPO / "bench" / "_server_post.lua"
        t0 = time.monotonic()
        load = subprocess.Popen(
            ["wrk", "-t1", "-c16", "-d120s", "--timeout", "10s", "-s", str(lua), first.url + INFER_PATH],
            env={**os.environ, "WRK_BODY_FILE": str(body)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait(lambda: spec_replicas(client, ns) > 1, 60, "a scale-up decision")
        decision = time.monotonic() - t0
        # What a new pod adds on a real node: a fresh server process until it is ready.
        second = LocalServer(repo, traffic, work / "server-1.log", host="127.0.0.3", port=naming.HTTP_PORT)
        servers.append(second)
        wait(lambda: spec_replicas(client, ns) == 4, 60, "4 replicas wanted")
        decision_all = time.monotonic() - t0
        wait(lambda: ready_replicas(client, ns) == 4, 60, "4 pods ready")
        replicas_ready = time.monotonic() - t0
        new_server_ready = second.wait_ready()
        ms = client.get(MODELSERVICE_RESOURCE, "digits", namespace=ns)
        reason = ms["status"]["lastScaleDecision"]["reason"]
        load.send_signal(signal.SIGINT)
        load.wait(10)
        t1 = time.monotonic()
        wait(lambda: spec_replicas(client, ns) == 1, DELAY + 60, "scale-down after the delay", period=0.2)
        scale_down = time.monotonic() - t1
        print(f"first server start -> ready: {server_ready:.2f} s")
        print(f"load step -> first scale-up decision: {decision:.2f} s (goal <= {GOAL_SECONDS:.0f} s)")
        print(f"load step -> spec.replicas 4: {decision_all:.2f} s ({reason})")
        print(f"load step -> 4 pods Ready (kwok): {replicas_ready:.2f} s")
        print(f"new server process start -> ready: {new_server_ready:.2f} s")
        print(f"load step -> a new replica serving on a real node (estimate: decision + server start): "
              f"{decision + new_server_ready:.2f} s")  # fmt: skip
        print(f"load stopped -> scaled down to 1: {scale_down:.2f} s (scaleDownDelaySeconds {DELAY})")
        print(f"baseline: scrape interval {SCRAPE_INTERVAL:.1f} s")
        print(f"ratio decision_vs_goal {decision / GOAL_SECONDS:.3f}")
        print(f"ratio decision_vs_scrape_interval {decision / SCRAPE_INTERVAL:.3f}")
        print(f"ratio scale_down_vs_delay {scale_down / DELAY:.3f}")
        return 0 if decision <= GOAL_SECONDS else 1
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        for s in servers:
            s.stop()
        try:
            client.delete(Namespace, ns)
            # The operator must see its ModelService go (kopf's finalizer) before it stops.
            wait(
                lambda: not list(client.list(MODELSERVICE_RESOURCE, namespace=ns)),
                60,
                "the ModelService gone",
            )
        except (ApiError, SystemExit):
            pass
        os.killpg(operator.pid, signal.SIGTERM)
        try:
            operator.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(operator.pid, signal.SIGKILL)
            operator.wait()
        op_log.close()
        marker.unlink(missing_ok=True)
        if started_cluster and not dev.other_users():
            dev.down()
        print(f"logs: {work}")


if __name__ == "__main__":
    sys.exit(main())
