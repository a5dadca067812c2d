"""`real_cluster` (session): a local cluster with one real node (kubelet + containerd + runc +
CNI + kube-proxy in a network namespace of its own), CoreDNS and the default StorageClass, in
the directory `$COXSWAIN_CLUSTER_DIR-real` so it never replaces the kwok-only cluster other
tests share. No kwok nodes: every pod lands on the real node. Stopped at the end unless
COXSWAIN_KEEP_CLUSTER=1 or it was already up.

`real_images` (session): the three images from `make images` (built here when the tree changed,
seconds when not), imported into the node (only those it lacks). `real_release` (session): the
operator from its image, installed with `helm upgrade --install` from helm/coxswain (its
ServiceAccount and RBAC), watching the namespace `coxswain-e2e` only (suites with a host-process
operator use op-* namespaces), hostPath allowed under the temp directory. `release_namespace`:
that namespace, with every TrainingJob and ModelService a test made there deleted afterwards.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount
from realnode_harness import E2E_NAMESPACE, RELEASE, RELEASE_NAMESPACE

from cluster_fixtures import CRDS_DIR, KEEP_ENV, ClusterHandle, fresh_namespace, wait_for
from coxswain.devcluster import DevCluster, default_cluster_dir
from coxswain.devcluster.bootstrap import make_client
from coxswain.devcluster.crds import apply_crds, wait_established
from coxswain.devcluster.operator_release import dev_values, helm_uninstall, helm_upgrade_install
from coxswain.devimages import BuiltImages, build_images
from coxswain.kube import MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE
from operator_fixtures import NAMESPACE_PREFIX, OperatorProcess, host_operator

REAL_NODES = 1
# Cold on 2 busy cores: kubelet's first sync, containerd's image import, CoreDNS and the
# provisioner starting; the control plane alone takes a minute when the machine is loaded.
UP_TIMEOUT = 600.0
# pytest's temporary directories (checkpoints, model repositories) live under it.
HOST_PATH_PREFIX = tempfile.gettempdir()


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


@pytest.fixture(scope="module")
def real_host_operator(real_cluster: ClusterHandle) -> Iterator[OperatorProcess]:
    """The operator as a host process on the real-node cluster (the suites that drive their own
    operator; the helm release watches only its e2e namespace, so the two never meet)."""
    yield from host_operator(real_cluster)


@pytest.fixture
def real_op_namespace(real_cluster: ClusterHandle) -> Iterator[str]:
    """A namespace `real_host_operator` watches."""
    yield from fresh_namespace(real_cluster, NAMESPACE_PREFIX)


@pytest.fixture(scope="session")
def real_images(real_cluster: ClusterHandle, real_dev: DevCluster) -> BuiltImages:
    """The three images on the real node: built if the tree changed, imported if the node lacks them."""
    began = time.monotonic()
    built = build_images()
    real_dev.load_image(built.layout)
    print(
        f"\nimages {'built and ' if built.built else ''}on the real node in {time.monotonic() - began:.1f} s"
    )
    return built


@pytest.fixture(scope="session")
def real_release(
    real_cluster: ClusterHandle, real_images: BuiltImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The operator from its image, installed by helm; yields the release's namespace."""
    client = real_cluster.client
    try:
        client.create(Namespace(metadata=ObjectMeta(name=E2E_NAMESPACE)))
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    wait_for(lambda: client.get(ServiceAccount, "default", namespace=E2E_NAMESPACE), 60, "the e2e namespace")
    digest = next(image.digest for image in real_images.images if "/operator:" in image.ref)
    values = dev_values(digest, [E2E_NAMESPACE], [HOST_PATH_PREFIX])
    helm_upgrade_install(
        real_cluster.bin_dir,
        real_cluster.kubeconfig,
        RELEASE,
        RELEASE_NAMESPACE,
        values,
        tmp_path_factory.mktemp("release") / "values.yaml",
    )
    yield RELEASE_NAMESPACE
    helm_uninstall(real_cluster.bin_dir, real_cluster.kubeconfig, RELEASE, RELEASE_NAMESPACE)


@pytest.fixture
def release_namespace(real_cluster: ClusterHandle, real_release: str) -> Iterator[str]:
    """The namespace the installed operator watches; what a test made there is deleted after it
    (its pods go in the background, as they would with the namespace)."""
    yield E2E_NAMESPACE
    for resource in (MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE):
        for obj in real_cluster.client.list(resource, namespace=E2E_NAMESPACE):
            real_cluster.client.delete(resource, obj["metadata"]["name"], namespace=E2E_NAMESPACE)


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository: digits v1, v2 (good) and v3 (fails every real request)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modelservice"))
    from serving_harness import write_repository  # torch: imported only when a test needs it

    root = tmp_path_factory.mktemp("models")
    write_repository(root)
    # The servers run as uid 1000 and read it (the volume is mounted at its own path: the
    # parents' modes do not matter).
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root
