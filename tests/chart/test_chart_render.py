"""The chart as `helm lint` and `helm template` see it: no cluster needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_harness import CHART, DASHBOARDS, MONITORS_ON, RULES_FILE, find, helm, render, rules_of

pytestmark = pytest.mark.unit

NAMESPACED = {"watchNamespaces": ["team-a", "team-b"]}
MODES = {
    "cluster-wide": {},
    "namespaced": NAMESPACED,
    "cluster-wide+monitors": MONITORS_ON,
    "namespaced+monitors": {**NAMESPACED, **MONITORS_ON},
}
# Verbs that would let the operator escalate or read what is not its own.
FORBIDDEN_RESOURCES = {
    "secrets",
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "nodes",
    "serviceaccounts/token",
}


@pytest.mark.parametrize("mode", MODES)
def test_helm_lint_is_clean(mode: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(MODES[mode]))
    result = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout
    assert "0 chart(s) failed" in result.stdout


def test_operator_runs_two_replicas_electing_a_leader_locked_down(tmp_path: Path) -> None:
    objs = render(tmp_path, {"watchNamespaces": ["team-a"], "logLevel": "debug", "logFormat": "plain"})
    (deploy,) = find(objs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cx-coxswain"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "ghcr.io/coxswain-dev/operator:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "health": 8081}
    assert container["resources"]["limits"]["memory"] == "256Mi"
    command = " ".join(container["command"] + container["args"])
    for part in ("coxswain operator run", '--lease "coxswain"', '-n "team-a"', "--log-level DEBUG"):
        assert part in command
    assert "--standalone" not in command, "two replicas must elect one leader"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    (svc,) = find(objs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def _all_rules(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rules_of(objs, "ClusterRole") + (rules_of(objs, "Role") if find(objs, "Role") else [])


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rules_name_every_resource_and_verb_and_grant_nothing_sensitive(mode: str, tmp_path: Path) -> None:
    for rule in _all_rules(render(tmp_path, MODES[mode])):
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not set(rule["resources"]) & FORBIDDEN_RESOURCES, rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        assert "rbac.authorization.k8s.io" not in rule["apiGroups"]
        if "pods" in rule["resources"] or "replicasets" in rule["resources"]:
            assert rule["verbs"] == ["list", "watch"], "pods are read only: the Job controller owns them"


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_owners_finalizers_are_updatable_so_children_may_block_their_deletion(
    mode: str, tmp_path: Path
) -> None:
    # Issue 15: OwnerReferencesPermissionEnforcement refuses blockOwnerDeletion without it.
    rules = _all_rules(render(tmp_path, MODES[mode]))
    finalizers = [r for r in rules if "trainingjobs/finalizers" in r["resources"]]
    assert finalizers and finalizers[0]["verbs"] == ["update"]
    assert "modelservices/finalizers" in finalizers[0]["resources"]


def _operator_command(objs: list[dict[str, Any]]) -> str:
    (deploy,) = find(objs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return " ".join(container["command"] + container["args"])


def test_tenancy_policy_defaults_are_safe(tmp_path: Path) -> None:
    command = _operator_command(render(tmp_path))
    assert "--allow-host-path" not in command and "--allow-secret" not in command
    assert '--image-prefix "ghcr.io/coxswain-dev/"' in command


def test_tenancy_values_become_operator_flags(tmp_path: Path) -> None:
    values = {
        "tenancy": {
            "hostPath": {"allowed": True, "prefixes": ["/srv/models"]},
            "imagePrefixes": ["registry.example/ml/", "ghcr.io/coxswain-dev/"],
            "secrets": {"team-a": ["model-key"], "team-*": ["serving-token-*"]},
        }
    }
    command = _operator_command(render(tmp_path, values))
    for part in (
        "--allow-host-path",
        '--host-path-prefix "/srv/models"',
        '--image-prefix "registry.example/ml/"',
        '--allow-secret "team-a=model-key"',
        '--allow-secret "team-*=serving-token-*"',
    ):
        assert part in command


def _leader_election_role(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (role,) = [r for r in find(objs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    return role


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_leader_election_is_one_lease_in_the_release_namespace(mode: str, tmp_path: Path) -> None:
    objs = render(tmp_path, MODES[mode])
    role = _leader_election_role(objs)
    assert role["metadata"]["namespace"] == "coxswain-system"
    assert all(
        r["apiGroups"] == ["coordination.k8s.io"] and r["resources"] == ["leases"] for r in role["rules"]
    )
    update = next(r for r in role["rules"] if "update" in r["verbs"])
    assert update["resourceNames"] == ["coxswain"], "only its own Lease is written"
    (binding,) = [b for b in find(objs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert binding["subjects"][0]["name"] == "cx-coxswain"
    assert not [o for o in objs if o["apiVersion"].startswith("kopf.dev")], "no kopf peering objects"


def test_cluster_wide_mode_is_one_cluster_role(tmp_path: Path) -> None:
    objs = render(tmp_path)
    assert [r["metadata"]["name"] for r in find(objs, "Role")] == ["cx-coxswain-leader-election"]
    (role,) = find(objs, "ClusterRole")
    (binding,) = find(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cx-coxswain", "namespace": "coxswain-system"}
    ]
    assert not [r for r in role["rules"] if r["apiGroups"] == ["kopf.dev"]]


def test_namespaced_mode_is_a_role_per_namespace_plus_kopfs_cluster_reads(tmp_path: Path) -> None:
    objs = render(tmp_path, NAMESPACED)
    (cluster_role,) = find(objs, "ClusterRole")
    cluster_wide = {
        (g, r) for rule in cluster_role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert cluster_wide == {
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("", "namespaces"),
        ("storage.k8s.io", "storageclasses"),
    }
    assert all(rule["verbs"] == ["list", "watch"] for rule in cluster_role["rules"])
    roles = [r for r in find(objs, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    bindings = [
        b for b in find(objs, "RoleBinding") if not b["metadata"]["name"].endswith("-leader-election")
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == "coxswain-system"


def test_namespace_globs_are_refused(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"watchNamespaces": ["team-*"]}))
    result = helm("template", "cx", str(CHART), "--kube-version", "1.35.0", "-f", str(values), check=False)
    assert result.returncode != 0
    assert 'watchNamespaces: "team-*" is not a namespace name' in result.stderr


def test_prometheus_operator_objects_render_only_when_enabled(tmp_path: Path) -> None:
    kinds = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not {o["kind"] for o in render(tmp_path)} & kinds
    objs = render(tmp_path, MONITORS_ON)
    assert all(o["apiVersion"] == "monitoring.coreos.com/v1" for o in objs if o["kind"] in kinds)
    (monitor,) = find(objs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True, "per-object series keep their namespace"
    trainers, servers = find(objs, "PodMonitor")
    assert trainers["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/job-completion-index"] == "0"
    assert servers["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    (activator,) = find(objs, "PodMonitor", activator=True)
    endpoint = activator["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["honorLabels"]) == ("admin", True), (
        "held services keep their namespace"
    )
    assert activator["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "activator"
    assert not find(
        render(tmp_path, {**MONITORS_ON, "activator": {"enabled": False}}), "PodMonitor", activator=True
    )
    (rule,) = find(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text()), "the PrometheusRule embeds the rules file"


def test_dashboards_are_configmaps_holding_the_json_files(tmp_path: Path) -> None:
    maps = [m for m in find(render(tmp_path), "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]
    assert len(maps) == len(DASHBOARDS) == 3
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = m["data"].items()
        assert text == (CHART / "dashboards" / key).read_text().rstrip("\n")
    assert not find(render(tmp_path, {"dashboards": {"enabled": False}}), "ConfigMap")


def test_crds_are_ours_only(tmp_path: Path) -> None:
    names = {o["metadata"]["name"] for o in find(render(tmp_path), "CustomResourceDefinition")}
    assert names == {"trainingjobs.coxswain.dev", "modelservices.coxswain.dev"}


def test_the_activator_gets_only_endpointslice_reads_and_modelservice_scale(tmp_path: Path) -> None:
    for values, kinds in (({}, ("ClusterRole", "ClusterRoleBinding")), (NAMESPACED, ("Role", "RoleBinding"))):
        objs = render(tmp_path, values)
        (deploy,) = find(objs, "Deployment", activator=True)
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        assert container["command"][:3] == ["coxswain", "activator", "run"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        (service,) = find(objs, "Service", activator=True)
        assert service["metadata"]["labels"]["coxswain.dev/activator"] == "true"
        assert service["metadata"]["labels"]["coxswain.dev/slices"] == "true"  # the operator's watch
        roles = find(objs, kinds[0], activator=True)
        assert roles, kinds
        for role in roles:
            grants = {
                (g, r, v)
                for rule in role["rules"]
                for g in rule["apiGroups"]
                for r in rule["resources"]
                for v in rule["verbs"]
            }
            assert grants == {
                ("discovery.k8s.io", "endpointslices", "list"),
                ("discovery.k8s.io", "endpointslices", "watch"),
                ("coxswain.dev", "modelservices/scale", "get"),
                ("coxswain.dev", "modelservices/scale", "patch"),
            }
        for binding in find(objs, kinds[1], activator=True):
            assert binding["subjects"][0]["name"] == "cx-coxswain-activator"
    assert not find(render(tmp_path, {"activator": {"enabled": False}}), "Deployment", activator=True)
