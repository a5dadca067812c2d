"""The chart on the local cluster: server-side dry run, install, upgrade, uninstall.

The operator Deployment's pods land on kwok nodes, where containers only pretend to run.
So that the installed chart really operates, the test runs the Deployment's own command
line (read back from the cluster) as local processes, authenticated with a token of the
chart's ServiceAccount: two replicas, as the Deployment has, electing a leader through the
chart's Lease. Gap: the pod itself (image, probes, read-only root) does not run here until the
node agent can start it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_harness import CHART, MONITORS_ON, Replica, delete_custom_objects, helm, install, render
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.kwok_nodes import EXIT_CODE_ANNOTATION, KWOK_NODE_SELECTOR
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.trainingjob import naming
from operator_fixtures import free_port

pytestmark = pytest.mark.cluster

MONITOR_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


def _namespaces(cluster: ClusterHandle, count: int) -> list[str]:
    names = [f"t-{uuid.uuid4().hex[:10]}" for _ in range(count)]
    for name in names:
        cluster.client.create(Namespace(metadata=ObjectMeta(name=name)))
    return names


@pytest.fixture
def namespaces(cluster: ClusterHandle) -> Iterator[list[str]]:
    names = _namespaces(cluster, 3)
    yield names
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def _check_monitor_objects(objs: list[dict[str, Any]]) -> None:
    """prometheus-operator's CRDs are not in the local cluster; their schema is, as the typed
    models of cloudcoil-models-prometheus-operator (generated from those CRDs). A field the
    schema lacks is dropped by the model, so the round trip must give the object back."""
    from cloudcoil.models.prometheus_operator import v1 as models

    for obj in objs:
        model = getattr(models, obj["kind"]).model_validate(obj)
        assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == obj, obj["kind"]


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rendered_chart_is_accepted_by_the_api_server(
    cluster: ClusterHandle, namespaces: list[str], mode: str, tmp_path: Path
) -> None:
    release_ns, *watched = namespaces
    values = {**MONITORS_ON, **({"watchNamespaces": watched} if mode == "namespaced" else {})}
    objs = render(tmp_path, values, release="cx-dry", namespace=release_ns)
    monitors = [o for o in objs if o["kind"] in MONITOR_KINDS]
    assert sorted(o["kind"] for o in monitors) == [
        "PodMonitor",
        "PodMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ServiceMonitor",
    ]
    rest = [o for o in objs if o["kind"] not in MONITOR_KINDS]
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(yaml.safe_dump_all(rest))
    result = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "--validate=strict", "--field-manager=helm",
        "-f", str(manifest), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(rest), result.stdout
    _check_monitor_objects(monitors)


def _leading(replica: Replica) -> bool:
    """Whether this replica's last word on leadership was that it leads."""
    said = re.findall(r"(leads now and acts|is held by|lost it)", replica.log.read_text(errors="replace"))
    return bool(said) and said[-1] == "leads now and acts"


def _holder(cluster: ClusterHandle, namespace: str) -> str | None:
    lease = json.loads(
        cluster.kubectl("get", "lease", "coxswain", "-n", namespace, "-o", "json", check=False).stdout or "{}"
    )
    return (lease.get("spec") or {}).get("holderIdentity")


def _trainingjob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"task": {"builtin": {"model": "mlp", "dataset": "digits"}}, "nodes": 1,
                 "resources": {"cpu": "1", "memory": "1Gi"}, "nodeSelector": KWOK_NODE_SELECTOR},
    }  # fmt: skip


def _run_to_success(cluster: ClusterHandle, ns: str, name: str) -> None:
    cluster.client.create(TRAININGJOB_RESOURCE(_trainingjob(name)), namespace=ns)

    def running() -> Pod | None:
        pods = cluster.client.list(Pod, namespace=ns, labels={naming.LABEL_TRAININGJOB: name})
        return next((p for p in pods if p.status and p.status.phase == "Running"), None)

    pod = wait_for(running, 90, f"a running pod of TrainingJob {name}")
    assert pod.metadata is not None and pod.metadata.name is not None
    cluster.client.patch(
        Pod, pod.metadata.name, {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "0"}}}, namespace=ns
    )
    wait_for(
        lambda: (
            (cluster.client.get(TRAININGJOB_RESOURCE, name, namespace=ns).get("status") or {}).get("phase")
            == "Succeeded"
        ),
        90,
        f"TrainingJob {name} Succeeded",
    )


def _labelled_leftovers(cluster: ClusterHandle, release: str) -> list[str]:
    """Every object of every listable kind, in every namespace, that carries the release's label."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    found = []
    for kind in kinds:
        result = cluster.kubectl(
            "get", kind, "-A", "-l", f"app.kubernetes.io/instance={release}", "-o", "name", check=False
        )
        found += [line for line in result.stdout.splitlines() if line.strip()]
    return found


def test_install_operates_upgrade_changes_and_uninstall_leaves_nothing(
    cluster: ClusterHandle, namespaces: list[str], tmp_path: Path
) -> None:
    release_ns, first, second = namespaces
    name = f"cx-inst-{uuid.uuid4().hex[:6]}"
    values: dict[str, Any] = {
        "watchNamespaces": [first],
        "metrics": {"port": free_port()},
        "healthPort": free_port(),
        # Its pods only pretend to run (kwok); the processes below do the work.
        "nodeSelector": KWOK_NODE_SELECTOR,
        **MONITORS_ON,
    }
    # monitoring.coreos.com is not served here: install without the monitor objects.
    values["monitoring"] = {k: {"enabled": False} for k in MONITORS_ON["monitoring"]}
    release = install(cluster, tmp_path, name, values, namespace=release_ns)
    replicas: list[Replica] = []
    try:
        pods = json.loads(
            cluster.kubectl(
                "get",
                "pods",
                "-n",
                release_ns,
                "-l",
                f"app.kubernetes.io/instance={name},app.kubernetes.io/component=operator",
                "-o",
                "json",
            ).stdout
        )
        assert len(pods["items"]) == 2, "the Deployment runs two replicas"
        replicas = [
            Replica(
                cluster, release, f"{name}-coxswain-{s}", tmp_path / f"replica-{s}.log", own_ports=s == "b"
            )
            for s in ("a", "b")
        ]
        for replica in replicas:
            wait_for(lambda r=replica: r.healthy() or None, 60, f"/healthz of {replica.pod_id}")  # type: ignore[misc]
        # One replica takes the Lease (in the release's namespace) and acts; the other waits
        # and says whom for.
        holder = wait_for(lambda: _holder(cluster, release_ns), 60, "a replica holding the Lease")
        active = next(r for r in replicas if r.pod_id == holder)
        standby = next(r for r in replicas if r.pod_id != holder)
        wait_for(lambda: _leading(active) or None, 60, "the Lease holder acting")
        wait_for(
            lambda: f"is held by {holder}" in standby.log.read_text(errors="replace") or None,
            60,
            "the standby saying which replica it waits for",
        )

        _run_to_success(cluster, first, "installed")
        delete_custom_objects(cluster, first)
        assert not _leading(standby), "both replicas acted at once"

        # Failover: the active replica stops (SIGTERM gives the Lease up) and the standby
        # takes over.
        active.stop()
        wait_for(lambda: _leading(standby) or None, 60, "the standby replica taking over")
        assert _holder(cluster, release_ns) == standby.pod_id

        helm("upgrade", name, str(CHART), "-n", release_ns, "--reuse-values", "--set", f"watchNamespaces={{{first},{second}}}",
             "--set", "logLevel=DEBUG", "--wait", env=cluster.env())  # fmt: skip
        roles = cluster.kubectl(
            "get", "roles", "-A", "-l", f"app.kubernetes.io/instance={name}", "-o", "name"
        ).stdout.split()
        # One granting Role per watched namespace; the release namespace's Lease Role stays apart.
        # (The activator's Roles, one per watched namespace too, are named <release>-activator.)
        granting = [r for r in roles if not r.endswith(("-leader-election", "-activator"))]
        assert len(granting) == 2
        args = json.loads(
            cluster.kubectl(
                "get",
                "deployment",
                "-n",
                release_ns,
                "-l",
                f"app.kubernetes.io/instance={name},app.kubernetes.io/component=operator",
                "-o",
                "json",
            ).stdout
        )
        command = " ".join(args["items"][0]["spec"]["template"]["spec"]["containers"][0]["args"])
        assert f'-n "{second}"' in command and "--log-level DEBUG" in command
    finally:
        for replica in replicas:
            replica.stop()
        # Also when the test failed above: ClusterRoles outlive the test's namespaces.
        uninstalled = helm("uninstall", name, "-n", release_ns, "--wait", env=cluster.env(), check=False)
    assert uninstalled.returncode == 0, uninstalled.stderr
    leftovers = wait_for(
        lambda: not _labelled_leftovers(cluster, name) or None, 60, "nothing of the release left"
    )
    assert leftovers
    # Helm never deletes what crds/ installed (on purpose: deleting a CRD deletes every object).
    cluster.kubectl("get", "crd", "trainingjobs.coxswain.dev", "modelservices.coxswain.dev")
