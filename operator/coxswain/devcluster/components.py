"""The control plane's processes and their flags, in start order.

Choices that differ from a production cluster, and why:
- everything binds 127.0.0.1 on ports picked free at `up`, so several clusters (one per
  cluster directory) can run side by side on one machine;
- etcd runs without fsync on a temporary directory: test data need not survive a crash;
- leader election is off: a single controller-manager and scheduler, and a restart
  must not wait for an old lease to expire;
- OwnerReferencesPermissionEnforcement is on (off by default upstream), so the chart's RBAC
  is tested against the stricter clusters;
- `--endpoint-reconciler-type=none` without real nodes: the `kubernetes` Service would otherwise
  get the loopback address as its endpoint, which endpoint validation refuses (log noise forever).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from coxswain.devcluster.pki import CertPair, ClusterPKI
from coxswain.devcluster.state import ClusterPaths

SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ALWAYS_ALLOW = "/healthz,/readyz,/livez,/metrics"
PORT_NAMES = ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok", "coredns-health")


class Component(BaseModel):
    """One process of the cluster."""

    name: str
    argv: list[str]
    health_url: str | None = None
    env: dict[str, str] = {}

    def log_path(self, paths: ClusterPaths) -> Path:
        return paths.logs_dir / f"{self.name}.log"


def etcd(bin_dir: Path, data_dir: Path, ports: dict[str, int]) -> Component:
    client = f"http://127.0.0.1:{ports['etcd']}"
    peer = f"http://127.0.0.1:{ports['etcd-peer']}"
    return Component(
        name="etcd",
        argv=[
            str(bin_dir / "etcd"),
            "--name=coxswain",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=coxswain={peer}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
        health_url=f"{client}/health",
    )


def kube_apiserver(
    bin_dir: Path,
    pki: ClusterPKI,
    paths: ClusterPaths,
    ports: dict[str, int],
    node_gateway: str | None = None,
    kubelet_client: CertPair | None = None,
) -> Component:
    """With real nodes, `node_gateway` is the host bridge's address: the API server also
    listens there (kubelets and pods reach it through the `kubernetes` Service, whose endpoint
    it then publishes), and it calls kubelets at their InternalIP with `kubelet_client`."""
    if node_gateway and kubelet_client:
        # The wildcard is the only way to serve both loopback and the bridge from one port;
        # the port is random and nothing is sent from it.
        where = [
            "--bind-address=0.0.0.0",
            f"--advertise-address={node_gateway}",
            "--endpoint-reconciler-type=lease",
        ]
        where += [
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
        ]
    else:
        where = [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
        ]
    return Component(
        name="kube-apiserver",
        argv=[
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            *where,
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={paths.pki_dir}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The aggregation layer's front proxy; without it every component that reads
            # extension-apiserver-authentication logs a missing CA bundle each minute.
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            # Node: kubelets of real nodes act as system:node:<name>, limited to their own objects.
            "--authorization-mode=Node,RBAC",
            # OwnerReferencesPermissionEnforcement, as on hardened clusters (OpenShift turns it on):
            # setting blockOwnerDeletion on a child needs `update` on the owner's finalizers,
            # which the chart's RBAC must grant.
            "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
            "--allow-privileged=true",
            "--profiling=false",
        ],
        health_url=f"https://127.0.0.1:{ports['apiserver']}/readyz",
    )


def kube_controller_manager(
    bin_dir: Path, pki: ClusterPKI, kubeconfig: Path, ports: dict[str, int]
) -> Component:
    return Component(
        name="kube-controller-manager",
        argv=[
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['controller-manager']}",
            f"--authorization-always-allow-paths={ALWAYS_ALLOW}",
            "--leader-elect=false",
            # Every default controller (Deployment, ReplicaSet, Job, garbage collector,
            # namespace, serviceaccount-token, node lifecycle...). Cloud controllers are off
            # by themselves without a cloud provider; the bootstrap-token ones are not needed.
            "--controllers=*",
            # Each controller acts as its own ServiceAccount, as on kubeadm clusters, so RBAC
            # mistakes show up here rather than in production.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=false",
            # Tests create hundreds of pods at once; the default 20 QPS would pace them.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
        ],
        health_url=f"https://127.0.0.1:{ports['controller-manager']}/healthz",
    )


def kube_scheduler(bin_dir: Path, kubeconfig: Path, ports: dict[str, int]) -> Component:
    return Component(
        name="kube-scheduler",
        argv=[
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['scheduler']}",
            f"--authorization-always-allow-paths={ALWAYS_ALLOW}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        health_url=f"https://127.0.0.1:{ports['scheduler']}/healthz",
    )


def kwok(
    bin_dir: Path, kubeconfig: Path, stages: Path, paths: ClusterPaths, ports: dict[str, int]
) -> Component:
    return Component(
        name="kwok",
        argv=[
            str(bin_dir / "kwok"),
            f"--kubeconfig={kubeconfig}",
            f"--config={stages}",
            # Only nodes annotated as fake: a node agent's real Node must stay untouched.
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            # kwok renews a Lease per node, which keeps the node lifecycle controller from
            # marking the nodes NotReady and evicting their pods.
            "--node-lease-duration-seconds=40",
            f"--cidr={POD_CIDR}",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ],
        health_url=f"http://127.0.0.1:{ports['kwok']}/healthz",
        # kwok reads ~/.kwok/kwok.yaml too unless its work dir points elsewhere.
        env={"KWOK_WORKDIR": str(paths.run_dir / "kwok")},
    )
