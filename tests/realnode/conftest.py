"""`real_cluster` (session): a local cluster with one real node (kubelet + containerd + runc +
CNI + kube-proxy in a network namespace of its own), CoreDNS and the default StorageClass, in
the directory `$COXSWAIN_CLUSTER_DIR-real` so it never replaces the kwok-only cluster other
tests share. No kwok nodes: every pod lands on the real node. Stopped at the end unless
COXSWAIN_KEEP_CLUSTER=1 or it was already up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_fixtures import CRDS_DIR, KEEP_ENV, ClusterHandle, fresh_namespace
from coxswain.devcluster import DevCluster, default_cluster_dir
from coxswain.devcluster.bootstrap import make_client
from coxswain.devcluster.crds import apply_crds, wait_established

REAL_NODES = 1
# Cold on 2 busy cores: kubelet's first sync, containerd's image import, CoreDNS and the
# provisioner starting; the control plane alone takes a minute when the machine is loaded.
UP_TIMEOUT = 600.0


def real_cluster_dir() -> Path:
    base = default_cluster_dir()
    return base.with_name(base.name + "-real")


@pytest.fixture(scope="session")
def real_dev() -> DevCluster:
    """The real-node cluster's directory and controls (started by `real_cluster`)."""
    return DevCluster(real_cluster_dir())


@pytest.fixture(scope="session")
def real_cluster(real_dev: DevCluster) -> Iterator[ClusterHandle]:
    if os.geteuid() != 0:
        pytest.skip("real nodes need root (network namespaces, cgroups, mounts)")
    dev = real_dev
    marker = dev.add_user()
    started_here = not dev.is_healthy()
    began = time.monotonic()
    try:
        state = dev.up(gpu_nodes=0, cpu_nodes=0, real_nodes=REAL_NODES, timeout=UP_TIMEOUT)
        if started_here:
            print(f"\nreal-node cluster up in {time.monotonic() - began:.1f} s")
        client = make_client(dev.paths.kubeconfig)
        crds = apply_crds(client, CRDS_DIR)
        wait_established(client, crds)
        yield ClusterHandle(kubeconfig=dev.paths.kubeconfig, bin_dir=state.bin_dir, client=client, crds=crds)
    finally:
        marker.unlink(missing_ok=True)
        keep = os.environ.get(KEEP_ENV, "") not in ("", "0")
        if started_here and not keep and not dev.other_users():
            dev.down()


@pytest.fixture
def real_namespace(real_cluster: ClusterHandle) -> Iterator[str]:
    """A fresh namespace on the real-node cluster, deleted afterwards."""
    yield from fresh_namespace(real_cluster)
