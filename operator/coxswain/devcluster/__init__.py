"""The local Kubernetes control plane that Coxswain is developed and tested against.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, built from the Go
module proxy by dev/build-tools.sh and run as local processes on loopback ports; see
`coxswain dev cluster --help` and design.md ("The local cluster").
"""

from coxswain.devcluster.cluster import ClusterStartError, ClusterStatus, DevCluster
from coxswain.devcluster.state import CLUSTER_DIR_ENV, default_cluster_dir

__all__ = ["CLUSTER_DIR_ENV", "ClusterStartError", "ClusterStatus", "DevCluster", "default_cluster_dir"]
