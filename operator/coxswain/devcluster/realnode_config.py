"""Configuration files of one real node (containerd, CNI, kubelet, kube-proxy) and of the
cluster's DNS and storage provisioner, written under the cluster directory.

Settings that differ from a kubeadm node, and why:
- `failCgroupV1: false`, cgroupfs driver: this machine has cgroup v1 controllers and no systemd;
- containerd `restrict_oom_score_adj = true`: the VM refuses a negative oom_score_adj, and
  without it every pod sandbox fails with "can't get final child's PID from pipe";
- every state directory (containerd root/state, runc root, pod network namespaces, CNI IPAM,
  kubelet root) lives under the node's directory, so `down` finds all of it by path;
- eviction thresholds 0% and image GC off: the node shares the host's disk with everything
  else, and images cannot be pulled back after a GC;
- `syncFrequency` is short so a ConfigMap change reaches mounted volumes within seconds
  (the kubelet refreshes them on each pod sync; the default minute is longer than a canary
  analysis interval);
- resolv.conf for pods has no upstream: CoreDNS answers cluster.local and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from coxswain.devcluster.realnode_plan import CLUSTER_DNS_IP, CLUSTER_DOMAIN, NodePlan, RealNodesPlan

CNI_BIN_DIR = "/usr/lib/cni"
PAUSE_IMAGE = "coxswain.dev/pause:dev"
# How often the kubelet re-syncs each pod, which is when ConfigMap volumes are refreshed.
KUBELET_SYNC_FREQUENCY = "5s"


def containerd_socket(node: NodePlan) -> Path:
    return node.directory / "containerd.sock"


def containerd_content_blobs(node: NodePlan) -> Path:
    """Where the node's containerd keeps blob files (its content store under `root`)."""
    return node.directory / "containerd" / "root" / "io.containerd.content.v1.content" / "blobs" / "sha256"


def write_containerd_config(node: NodePlan) -> Path:
    d = node.directory
    conf = f"""version = 2
root = "{d / "containerd" / "root"}"
state = "{d / "containerd" / "state"}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[plugins."io.containerd.metadata.v1.bolt"]
  # Adopt blobs already in the store (linked from the image layout) instead of copying them.
  content_sharing_policy = "shared"

[grpc]
  address = "{containerd_socket(node)}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "containerd" / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d / "cni"}"
    max_conf_num = 1
"""
    path = d / "containerd.toml"
    path.write_text(conf)
    return path


def write_cni_config(nodes: RealNodesPlan, node: NodePlan) -> Path:
    """A bridge inside the node's namespace; host-local IPAM keeps its leases in the node's
    directory (the default /var/lib/cni would be shared between clusters)."""
    conflist = {
        "cniVersion": "1.0.0",
        "name": node.netns,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                # Pods reach the API server and DNS on the host bridge through the node.
                "isDefaultGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(node.directory / "cni-ipam"),
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.pod_gateway}]],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }
    (node.directory / "cni").mkdir(parents=True, exist_ok=True)
    path = node.directory / "cni" / "10-coxswain.conflist"
    path.write_text(json.dumps(conflist, indent=2))
    return path


def write_kubelet_config(node: NodePlan, ca_cert: Path, serving_cert: Path, serving_key: Path) -> Path:
    resolv = node.directory / "resolv.conf"
    resolv.write_text("# no upstream: CoreDNS answers cluster.local only\n")
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "failSwapOn": False,
        "enforceNodeAllocatable": [],
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "0%",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "address": node.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [CLUSTER_DNS_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv),
        "containerRuntimeEndpoint": f"unix://{containerd_socket(node)}",
        "syncFrequency": KUBELET_SYNC_FREQUENCY,
        "configMapAndSecretChangeDetectionStrategy": "Watch",
        "serializeImagePulls": False,
        "maxPods": 60,
        "shutdownGracePeriod": "0s",
        "localStorageCapacityIsolation": True,
        "podLogsDir": str(node.directory / "pods-logs"),
    }
    path = node.directory / "kubelet.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_kube_proxy_config(nodes: RealNodesPlan, node: NodePlan, kubeconfig: Path) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": node.name,
        "clusterCIDR": nodes.pod_range,
        "bindAddress": node.node_ip,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # Machine-wide conntrack sizes are not ours to change.
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    path = node.directory / "kube-proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_corefile(directory: Path, nodes: RealNodesPlan, kubeconfig: Path, health_port: int) -> Path:
    """CoreDNS on the host bridge's address, answering the cluster's names only (no
    `forward`: nothing outside this machine may be asked)."""
    corefile = f""".:53 {{
    bind {nodes.gateway_ip}
    errors
    health 127.0.0.1:{health_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 5
    }}
    cache 5
    loop
}}
"""
    path = directory / "Corefile"
    path.write_text(corefile)
    return path


def local_path_config_data(storage_dir: Path, helper_image: str) -> dict[str, str]:
    """The `local-path-config` ConfigMap local-path-provisioner reads: volumes are directories
    under `storage_dir` (every node shares the host's disk), made and removed by a helper pod
    that runs the `setup`/`teardown` scripts on the volume's node."""
    config = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(storage_dir)]}]}
    helper = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "helper-pod"},
        "spec": {"containers": [{"name": "helper-pod", "image": helper_image, "imagePullPolicy": "Never"}]},
    }
    return {
        "config.json": json.dumps(config),
        "helperPod.yaml": yaml.safe_dump(helper),
        # The provisioner runs these with VOL_DIR, VOL_MODE and VOL_SIZE_BYTES set.
        "setup": 'set -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
        "teardown": 'set -eu\nrm -rf "$VOL_DIR"\n',
    }
