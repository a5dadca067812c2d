"""A real kubelet + containerd node in the local cluster does what a user's node does:
security contexts and CPU limits enforced, cluster DNS, Service virtual IPs through kube-proxy,
the API server reachable from pods, `kubectl logs`, volumes from the default StorageClass, no
image pulls, and `down` leaving nothing behind, also after a `kill -9` of `up`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Node, PersistentVolumeClaim, Pod

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster import DevCluster, routes
from coxswain.devcluster.processes import marked_processes
from coxswain.devcluster.realnode import REAL_NODE_LABEL, leftovers
from coxswain.devcluster.realnode_images import BUSYBOX_IMAGE

pytestmark = pytest.mark.realnode

NODE_SELECTOR = {REAL_NODE_LABEL: "true"}
POD_TIMEOUT = 180.0


def busybox_pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": BUSYBOX_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
        "spec": {
            "nodeSelector": NODE_SELECTOR,
            "restartPolicy": spec.pop("restartPolicy", "Never"),
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def create(cluster: ClusterHandle, ns: str, *objs: dict[str, Any]) -> None:
    for obj in objs:
        cluster.client.create(from_dict(obj), namespace=ns)


def pod_status(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.client.get(Pod, name, namespace=ns).to_dict().get("status", {})
    return status


def wait_phase(cluster: ClusterHandle, ns: str, name: str, *phases: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = pod_status(cluster, ns, name)
        return status if status.get("phase") in phases else None

    found: dict[str, Any] = wait_for(probe, POD_TIMEOUT, f"pod {ns}/{name} in {phases}")
    return found


def logs(cluster: ClusterHandle, ns: str, name: str) -> str:
    return str(cluster.kubectl("logs", "-n", ns, name).stdout)


def test_node_is_ready_with_containerd(real_cluster: ClusterHandle) -> None:
    nodes = list(real_cluster.client.list(Node, labels={REAL_NODE_LABEL: "true"}))
    assert [n.metadata.name for n in nodes if n.metadata] == ["realnode-0"]
    info = nodes[0].status.nodeInfo if nodes[0].status else None
    assert info is not None and info.containerRuntimeVersion.startswith("containerd://")
    wide = real_cluster.kubectl("get", "nodes", "-o", "wide").stdout
    assert "containerd://" in wide


def test_security_context_and_cpu_limit_are_enforced(
    real_cluster: ClusterHandle, real_namespace: str
) -> None:
    script = (
        "id -u; id -g; touch /not-allowed 2>/dev/null && echo root-writable || echo root-read-only; sleep 30"
    )
    create(
        real_cluster,
        real_namespace,
        busybox_pod(
            "secure",
            script,
            securityContext={"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True},
            container={
                "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
            },
        ),
    )
    wait_phase(real_cluster, real_namespace, "secure", "Running")

    def output() -> str | None:
        text = logs(real_cluster, real_namespace, "secure")
        return text if "root-" in text else None

    out = wait_for(output, POD_TIMEOUT, "the pod's output through kubectl logs")
    assert out.split() == ["1000", "1000", "root-read-only"]
    metadata = real_cluster.client.get(Pod, "secure", namespace=real_namespace).metadata
    uid = metadata.uid if metadata else None
    quotas = [
        int(p.read_text())
        for p in Path("/sys/fs/cgroup/cpu").glob(f"coxswain-*-n0/kubepods*/**/pod{uid}/*/cpu.cfs_quota_us")
    ]
    assert 50000 in quotas, f"no container cgroup of pod {uid} with a 500m quota: {quotas}"


def test_dns_service_ip_and_api_server_from_a_pod(real_cluster: ClusterHandle, real_namespace: str) -> None:
    ns = real_namespace
    server = busybox_pod(
        "web",
        "mkdir -p /tmp/www && echo hello-from-web > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www",
        restartPolicy="Always",
        labels={"app": "web"},
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    create(real_cluster, ns, server, service)
    wait_phase(real_cluster, ns, "web", "Running")
    cluster_ip = real_cluster.kubectl(
        "get", "svc", "web", "-n", ns, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    # Debian's busybox-static wget crashes (segfault) and its nc cannot resolve names (static
    # glibc has no NSS): nslookup proves DNS, nc speaks HTTP to the addresses.
    client_script = (
        f"nslookup web.{ns}.svc.cluster.local; nslookup kubernetes.default.svc.cluster.local; "
        "for i in $(seq 1 30); do "
        f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {cluster_ip} 80 | grep hello && break; sleep 1; done; "
        "nc -w 2 10.0.0.1 443 </dev/null && echo api-server-reachable"
    )
    create(real_cluster, ns, busybox_pod("client", client_script))
    wait_phase(real_cluster, ns, "client", "Succeeded", "Failed")
    out = logs(real_cluster, ns, "client")
    pod_ip = pod_status(real_cluster, ns, "web")["podIP"]
    assert pod_ip.startswith("10.247."), pod_ip
    # The host reaches the pod through the cluster's bridge; nothing of the ranges leaves.
    for address in (pod_ip, cluster_ip, "10.247.255.1", "10.246.255.1"):
        assert not routes.leaves_machine(address), address
    assert cluster_ip in out, f"nslookup did not answer the Service's IP {cluster_ip}:\n{out}"
    assert re.search(r"^Address:\s+10\.0\.0\.1$", out, re.M), f"no answer for the kubernetes Service:\n{out}"
    assert "hello-from-web" in out, out
    assert "api-server-reachable" in out, out


def test_pvc_binds_through_the_default_storage_class(
    real_cluster: ClusterHandle, real_namespace: str
) -> None:
    ns = real_namespace
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Mi"}}},
    }
    writer = busybox_pod(
        "writer",
        "echo kept > /data/file && cat /data/file",
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
    )
    create(real_cluster, ns, pvc, writer)
    wait_phase(real_cluster, ns, "writer", "Succeeded")
    claim = real_cluster.client.get(PersistentVolumeClaim, "data", namespace=ns)
    assert claim.status is not None and claim.status.phase == "Bound"
    assert claim.spec is not None and claim.spec.storageClassName == "local-path"
    assert logs(real_cluster, ns, "writer").strip() == "kept"


def test_missing_image_is_never_pulled(real_cluster: ClusterHandle, real_namespace: str) -> None:
    create(
        real_cluster,
        real_namespace,
        busybox_pod("missing", "true", container={"image": "coxswain.dev/not-built:dev"}),
    )

    def reason() -> str | None:
        for c in pod_status(real_cluster, real_namespace, "missing").get("containerStatuses", []):
            waiting = c.get("state", {}).get("waiting") or {}
            if waiting.get("reason") == "ErrImageNeverPull":
                return str(waiting.get("message", ""))
        return None

    assert "coxswain.dev/not-built:dev" in wait_for(reason, POD_TIMEOUT, "ErrImageNeverPull")


def test_down_after_kill_9_of_up_leaves_nothing(tmp_path: Path) -> None:
    """`up` killed with SIGKILL once its kubelet runs; `down` then removes every process,
    mount, network namespace, link and cgroup of the cluster."""
    if os.geteuid() != 0:
        pytest.skip("real nodes need root")
    cluster_dir = tmp_path / "killed"
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "coxswain", "dev", "cluster", "--dir", str(cluster_dir), "up",
         "--gpu-nodes", "0", "--cpu-nodes", "0", "--real-nodes", "1", "--timeout", "600"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    dev = DevCluster(cluster_dir)
    try:

        def node_started() -> bool:
            state = dev.state()
            return state is not None and any(r.name == "kube-proxy-n0" for r in state.processes)

        wait_for(node_started, 300, "up to start the real node's kubelet and kube-proxy")
        time.sleep(2)  # let the kubelet start its first pod sandboxes' worth of mounts and cgroups
        up.send_signal(signal.SIGKILL)
        up.wait(10)
        assert marked_processes(dev.paths.root), "killing `up` should have left its components running"
        assert leftovers(dev.paths.root), "a killed `up` should have left its node behind"
    finally:
        if up.poll() is None:
            up.kill()
        dev.down()
    assert marked_processes(dev.paths.root) == []
    assert leftovers(dev.paths.root) == []
