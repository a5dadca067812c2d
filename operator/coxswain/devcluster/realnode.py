"""Real nodes in the local cluster: kubelet + containerd + runc + CNI + kube-proxy per node,
each node in a network namespace of its own (as kind puts each node in a container), plus the
cluster's CoreDNS and local-path-provisioner (the default StorageClass) as host processes.

`start_real_nodes` runs after the control plane is up; `remove_real_nodes` undoes everything by
name and path (processes are stopped by `DevCluster` first), so it also cleans up after a
`kill -9` of `up`. The address plan and names are in realnode_plan.py.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lightkube import ApiError, Client
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Node

from coxswain.devcluster import realnode_config as cfg
from coxswain.devcluster.kubeconfig import write_kubeconfig
from coxswain.devcluster.pki import CertPair, ClusterPKI, issue_from_ca
from coxswain.devcluster.realnode_config import CNI_BIN_DIR
from coxswain.devcluster.realnode_images import (
    BUSYBOX_IMAGE,
    import_archive,
    import_layout,
    link_layout_blobs,
    node_images_archive,
)
from coxswain.devcluster.realnode_net import add_node, in_netns, remove_all
from coxswain.devcluster.realnode_plan import (
    CLUSTER_DNS_IP,
    NodePlan,
    RealNodesPlan,
    cluster_tag,
    netns_prefix,
)

log = logging.getLogger("coxswain.devcluster")

CGROUP_MOUNT = Path("/sys/fs/cgroup")
REAL_NODE_LABEL = "coxswain.dev/real-node"
STORAGE_CLASS = "local-path"
LOCAL_PATH_NAMESPACE = "local-path-storage"
LOCAL_PATH_SERVICE_ACCOUNT = "local-path-provisioner"
# Which user the API server presents to kubelets (`kubectl logs`, exec); bound to the
# bootstrap policy's system:kubelet-api-admin role below.
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
CNI_CACHE = Path("/var/lib/cni/results")
NODE_BINARIES = ("kubelet", "kube-proxy", "coredns", "local-path-provisioner")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
HOST_PROGRAMS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "nsenter")
# kubelet links every container's log here (a fixed path); ours point into the nodes' directory.
CONTAINER_LOG_LINKS = Path("/var/log/containers")

# (name, argv, env) -> the spawned process is recorded by the caller.
Spawn = Callable[[str, list[str], dict[str, str]], None]


class RealNodeError(RuntimeError):
    """A real node did not come up; the message names the step and the log to read."""


def check_prerequisites(bin_dir: Path) -> None:
    """Fail before anything starts when a program real nodes need is missing or we are not root."""
    if os.geteuid() != 0:
        raise RealNodeError("real nodes need root (network namespaces, cgroups, mounts): run `up` as root")
    missing = [b for b in NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    missing += [p for p in HOST_PROGRAMS if shutil.which(p) is None]
    missing += [f"{CNI_BIN_DIR}/{p}" for p in CNI_PLUGINS if not os.access(Path(CNI_BIN_DIR) / p, os.X_OK)]
    if missing:
        raise RealNodeError(
            f"real nodes need {', '.join(missing)}: run dev/build-tools.sh (kubelet, kube-proxy, coredns, "
            "local-path-provisioner) and dev/install-system-deps.sh (containerd, runc, CNI plugins, iptables)"
        )


def apiserver_kubelet_client(pki_dir: Path, ca: CertPair) -> CertPair:
    return issue_from_ca(ca, pki_dir, "apiserver-kubelet-client", APISERVER_KUBELET_CLIENT)


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers and the unified one)."""
    return sorted(p for p in CGROUP_MOUNT.iterdir() if p.is_dir() and os.path.ismount(p))


def _make_cgroup_root(node: NodePlan) -> None:
    # kubelet refuses a cgroupRoot missing from any hierarchy.
    for hierarchy in cgroup_hierarchies():
        (hierarchy / node.cgroup_root.lstrip("/")).mkdir(exist_ok=True)


def _wait_for_socket(socket: Path, is_alive: Callable[[], bool], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if socket.exists():
            return
        if not is_alive():
            break
        time.sleep(0.1)
    raise RealNodeError(f"containerd did not open {socket}; see {log_path}")


def start_real_nodes(
    nodes: RealNodesPlan,
    bin_dir: Path,
    pki: ClusterPKI,
    api_port: int,
    run_dir: Path,
    spawn: Spawn,
    is_alive: Callable[[str], bool],
    logs_dir: Path,
) -> None:
    """Start every node's containerd, kubelet and kube-proxy, and import the node images."""
    check_prerequisites(bin_dir)
    server = f"https://{nodes.gateway_ip}:{api_port}"
    proxy_cert = issue_from_ca(pki.ca, run_dir, "kube-proxy", "system:kube-proxy")
    archive = node_images_archive(run_dir)
    for node in nodes.nodes:
        d = node.directory
        for sub in ("containerd", "kubelet", "pods-logs", "cni-ipam"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        _make_cgroup_root(node)
        add_node(nodes, node)
        kubelet_client = issue_from_ca(
            pki.ca, d, "kubelet-client", f"system:node:{node.name}", "system:nodes"
        )
        serving = issue_from_ca(
            pki.ca,
            d,
            "kubelet-serving",
            f"system:node:{node.name}",
            "system:nodes",
            server_ips=(node.node_ip,),
        )
        write_kubeconfig(
            d / "kubelet.kubeconfig", server, pki.ca.cert, kubelet_client, f"system:node:{node.name}"
        )
        write_kubeconfig(d / "kube-proxy.kubeconfig", server, pki.ca.cert, proxy_cert, "system:kube-proxy")
        containerd_conf = cfg.write_containerd_config(node)
        cfg.write_cni_config(nodes, node)
        kubelet_conf = cfg.write_kubelet_config(node, pki.ca.cert, serving.cert, serving.key)
        proxy_conf = cfg.write_kube_proxy_config(nodes, node, d / "kube-proxy.kubeconfig")
        socket = cfg.containerd_socket(node)
        socket.unlink(missing_ok=True)
        name = f"containerd-n{node.index}"
        spawn(name, in_netns(node.netns, "containerd", "--config", str(containerd_conf)), {})
        _wait_for_socket(socket, functools.partial(is_alive, name), logs_dir / f"{name}.log", 30.0)
        import_archive(socket, archive, cfg.containerd_content_blobs(node))
        spawn(
            f"kubelet-n{node.index}",
            in_netns(
                node.netns,
                str(bin_dir / "kubelet"),
                f"--config={kubelet_conf}",
                f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                f"--hostname-override={node.name}",
                f"--node-ip={node.node_ip}",
                f"--root-dir={d / 'kubelet'}",
                f"--cert-dir={d / 'kubelet-pki'}",
                f"--node-labels={REAL_NODE_LABEL}=true",
            ),
            {},
        )
        spawn(
            f"kube-proxy-n{node.index}",
            in_netns(node.netns, str(bin_dir / "kube-proxy"), f"--config={proxy_conf}"),
            {},
        )


def import_into_nodes(nodes: RealNodesPlan, archive: Path, names: set[str] | None = None) -> list[str]:
    """Import an image archive (OCI or docker format) into every node's containerd; from an OCI
    layout directory, only the images (of `names`, or all) a node lacks. Returns what was imported."""
    imported: set[str] = set()
    for node in nodes.nodes:
        socket, blobs = cfg.containerd_socket(node), cfg.containerd_content_blobs(node)
        if archive.is_dir():
            # Linked first: the import then adopts each layer it sends instead of writing it.
            link_layout_blobs(archive, blobs)
            imported.update(import_layout(socket, archive, names))
        else:
            import_archive(socket, archive, blobs)
            imported.add(str(archive))
    return sorted(imported)


def start_cluster_services(
    nodes: RealNodesPlan,
    bin_dir: Path,
    admin_kubeconfig: Path,
    run_dir: Path,
    spawn: Spawn,
    dns_health_port: int,
) -> None:
    """CoreDNS on the host bridge's address and local-path-provisioner, both as host processes
    with the admin kubeconfig (the dev cluster's own parts, like the controller manager)."""
    corefile = cfg.write_corefile(run_dir, nodes, admin_kubeconfig, dns_health_port)
    spawn("coredns", [str(bin_dir / "coredns"), "-conf", str(corefile)], {})
    spawn(
        "local-path-provisioner",
        [
            str(bin_dir / "local-path-provisioner"),
            "start",
            f"--kubeconfig={admin_kubeconfig}",
            f"--namespace={LOCAL_PATH_NAMESPACE}",
            f"--service-account-name={LOCAL_PATH_SERVICE_ACCOUNT}",
            f"--helper-image={BUSYBOX_IMAGE}",
        ],
        {},
    )


def _apply(client: Client, manifest: dict[str, object]) -> None:
    try:
        client.create(from_dict(manifest))
    except ApiError as e:
        if e.status.code != 409:
            raise


def create_cluster_objects(client: Client, nodes: RealNodesPlan, storage_dir: Path) -> None:
    """The objects real nodes need: the API server's right to call kubelets, the kube-dns
    Service pointing at CoreDNS on the host, and the default StorageClass with its provisioner's
    namespace, ServiceAccount and configuration."""
    _apply(
        client,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "coxswain-dev:apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": APISERVER_KUBELET_CLIENT}
            ],
        },
    )
    dns_ports = [
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
    ]
    _apply(
        client,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            # No selector: its endpoint is CoreDNS on the host bridge, written below.
            "spec": {"clusterIP": CLUSTER_DNS_IP, "ports": dns_ports},
        },
    )
    _apply(
        client,
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-host",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "coxswain.dev",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [nodes.gateway_ip], "conditions": {"ready": True}}],
            "ports": [{"name": p["name"], "port": 53, "protocol": p["protocol"]} for p in dns_ports],
        },
    )
    _apply(client, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LOCAL_PATH_NAMESPACE}})
    _apply(
        client,
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": LOCAL_PATH_SERVICE_ACCOUNT, "namespace": LOCAL_PATH_NAMESPACE},
        },
    )
    _apply(
        client,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "local-path-config", "namespace": LOCAL_PATH_NAMESPACE},
            "data": cfg.local_path_config_data(storage_dir, BUSYBOX_IMAGE),
        },
    )
    _apply(
        client,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "rancher.io/local-path",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        },
    )


def wait_for_real_nodes(client: Client, nodes: RealNodesPlan, timeout: float, logs_dir: Path) -> None:
    """Wait until every real node's kubelet has registered and reports Ready."""
    deadline = time.monotonic() + timeout
    pending = {n.name for n in nodes.nodes}
    while pending and time.monotonic() < deadline:
        for node in client.list(Node, labels={REAL_NODE_LABEL: "true"}):
            conditions = (node.status.conditions if node.status else None) or []
            if node.metadata and any(c.type == "Ready" and c.status == "True" for c in conditions):
                pending.discard(node.metadata.name or "")
        if pending:
            time.sleep(0.5)
    if pending:
        raise RealNodeError(
            f"real nodes {sorted(pending)} are not Ready after {timeout:.0f} s: see "
            f"{logs_dir}/kubelet-n*.log and {logs_dir}/containerd-n*.log"
        )


# ---- teardown ---------------------------------------------------------------------------


def _cgroup_dirs(cgroup_root: str) -> list[Path]:
    return [
        h / cgroup_root.lstrip("/") for h in cgroup_hierarchies() if (h / cgroup_root.lstrip("/")).is_dir()
    ]


def _kill_cgroup_processes(roots: list[Path], timeout: float = 10.0) -> int:
    """SIGKILL every process in the cgroup trees (the pods' containers and sandboxes)."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids: set[int] = set()
        for root in roots:
            for procs in root.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.1)
    return len(killed)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _remove_cgroups(roots: list[Path]) -> None:
    for root in roots:
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like escaped as octal.
        point = line.split()[4].encode().decode("unicode_escape")
        points.append(point)
    return points


def _unmount_under(prefixes: list[str]) -> list[str]:
    """Lazily unmount every mount at or below one of `prefixes`, deepest first."""
    done: list[str] = []
    for _ in range(5):
        points = [
            p for p in _mount_points() if any(p == x or p.startswith(x.rstrip("/") + "/") for x in prefixes)
        ]
        if not points:
            break
        for point in sorted(set(points), key=len, reverse=True):
            if subprocess.run(["umount", "-l", point], capture_output=True, check=False).returncode == 0:
                done.append(point)
    return done


def remove_real_nodes(cluster_dir: Path) -> list[str]:
    """Remove everything a cluster's real nodes leave on the machine once their processes are
    stopped: containers (by cgroup), mounts, network namespaces, veths, the bridge and its
    routes, cgroup directories and the nodes' files. Safe to run when there are none."""
    tag = cluster_tag(cluster_dir)
    removed: list[str] = []
    nodes_dir = cluster_dir / "nodes"
    # containerd's shims are not in the cluster's process groups: find them (and anything
    # else of the nodes) by the node directory in their command line.
    strays = _processes_mentioning(str(nodes_dir) + "/")
    for pid in strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if strays:
        removed.append(f"{len(strays)} node processes")
    roots = [d for h in cgroup_hierarchies() for d in h.glob(f"coxswain-{tag}-n*") if d.is_dir()]
    if roots:
        killed = _kill_cgroup_processes(roots)
        if killed:
            removed.append(f"{killed} container processes")
    unmounted = _unmount_under([str(nodes_dir), f"/run/netns/{netns_prefix(tag)}"])
    if unmounted:
        removed.append(f"{len(unmounted)} mounts")
    removed += remove_all(tag)
    if roots:
        _remove_cgroups(roots)
        removed.append(f"{len(roots)} cgroup directories")
    if CNI_CACHE.is_dir():
        for cached in CNI_CACHE.glob(f"{netns_prefix(tag)}*"):
            cached.unlink(missing_ok=True)
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and str(link.readlink()).startswith(str(nodes_dir) + "/"):
                link.unlink(missing_ok=True)
    if nodes_dir.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(nodes_dir)], check=False)
    return removed


def leftovers(cluster_dir: Path) -> list[str]:
    """What of the cluster's real nodes is still on the machine (empty after `down`)."""
    tag = cluster_tag(cluster_dir)
    found = [str(d) for h in cgroup_hierarchies() for d in h.glob(f"coxswain-{tag}-n*")]
    found += [p for p in _mount_points() if p.startswith(str(cluster_dir)) or netns_prefix(tag) in p]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    found += [line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if f"cx{tag}" in line]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    found += [line.split()[0] for line in netns.splitlines() if line.startswith(netns_prefix(tag))]
    return found
