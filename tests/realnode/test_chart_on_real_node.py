"""The chart's life cycle on the real node, with the operator's own image: `helm install` runs a
pod that passes its startup probe under the chart's security context (uid 1000, read-only root,
no capabilities) and its RBAC; `helm upgrade` with a changed value rolls it to a new pod that
starts too; `helm uninstall` removes what the release made and keeps the CRDs.

A release of its own, watching a fresh namespace in which nothing is created."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.operator_release import dev_values, helm_uninstall, helm_upgrade_install
from coxswain.devimages import BuiltImages

pytestmark = pytest.mark.realnode

RELEASE = "chartcheck"


def operator_pods(cluster: ClusterHandle, ns: str) -> list[Pod]:
    # The operator's pods, not the activator's (same release, component "activator").
    labels = {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "operator"}
    return list(cluster.client.list(Pod, namespace=ns, labels=labels))


def running_ready(pod: Pod) -> bool:
    st = pod.status
    return bool(
        st
        and st.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in st.conditions or [])
    )


def test_install_upgrade_uninstall_with_the_operator_image(
    real_cluster: ClusterHandle, real_images: BuiltImages, real_namespace: str, tmp_path: Path
) -> None:
    cluster = real_cluster
    ns = f"{real_namespace}-op"  # the release's own namespace; helm creates it
    watched = real_namespace
    digest = next(image.digest for image in real_images.images if "/operator:" in image.ref)
    values: dict[str, Any] = dev_values(digest, [watched], [])
    try:
        helm_upgrade_install(cluster.bin_dir, cluster.kubeconfig, RELEASE, ns, values, tmp_path / "v1.yaml")
        (first,) = [p for p in operator_pods(cluster, ns) if running_ready(p)]
        container = first.spec.containers[0] if first.spec else None
        assert container is not None and container.image == next(
            image.ref for image in real_images.images if "/operator:" in image.ref
        )
        # The security context is enforced: the process runs as 1000 on a read-only root.
        probe = cluster.kubectl(
            "exec", "-n", ns, first.metadata.name if first.metadata else "", "--",
            "python3", "-c", "import os; print(os.getuid()); open('/probe', 'w')",
            check=False,
        )  # fmt: skip
        assert probe.stdout.strip() == "1000" and "Read-only file system" in probe.stderr, probe
        # Its RBAC: a Role in the watched namespace, bound to the release's ServiceAccount.
        assert cluster.client.get(ServiceAccount, f"{RELEASE}-coxswain", namespace=ns)
        assert list(
            cluster.client.list(
                RoleBinding, namespace=watched, labels={"app.kubernetes.io/instance": RELEASE}
            )
        )

        # The activator runs from the same image: Ready once its EndpointSlice watch has listed.
        def activators_ready() -> bool:
            labels = {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "activator"}
            pods = list(cluster.client.list(Pod, namespace=ns, labels=labels))
            return bool(pods) and all(running_ready(p) for p in pods)

        wait_for(activators_ready, 180, "the activator's pods Ready")

        values["logLevel"] = "DEBUG"
        helm_upgrade_install(cluster.bin_dir, cluster.kubeconfig, RELEASE, ns, values, tmp_path / "v2.yaml")

        def rolled() -> Pod | None:
            pods = operator_pods(cluster, ns)
            fresh = [
                p for p in pods if p.metadata and first.metadata and p.metadata.uid != first.metadata.uid
            ]
            return fresh[0] if len(pods) == 1 and fresh and running_ready(fresh[0]) else None

        second = wait_for(rolled, 180, "the upgraded operator pod Ready in place of the first")
        args = " ".join(second.spec.containers[0].args or []) if second.spec else ""
        assert "--log-level DEBUG" in args
    finally:
        helm_uninstall(cluster.bin_dir, cluster.kubeconfig, RELEASE, ns)

    def gone() -> bool:
        try:
            cluster.client.get(Deployment, f"{RELEASE}-coxswain", namespace=ns)
        except ApiError as exc:
            return exc.status.code == 404
        return False

    wait_for(gone, 120, "the release's Deployment removed")
    assert not list(
        cluster.client.list(Role, namespace=watched, labels={"app.kubernetes.io/instance": RELEASE})
    )
    wait_for(lambda: not operator_pods(cluster, ns), 120, "the release's pods gone")
    assert cluster.client.get(CustomResourceDefinition, "trainingjobs.coxswain.dev")
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
