"""The chart's RBAC is enough for the operator and refuses what it must not do.

The controller tests run again with the operator process authenticated as the chart's
ServiceAccount (a TokenRequest token, what its pod would get): they pass only if every
request the controllers make is allowed by exactly the chart's rules. Then a list of things
the operator must never be able to do is tried for real, and each must be refused.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from chart_harness import REPO, Release, install, uninstall

from cluster_fixtures import ClusterHandle

pytestmark = pytest.mark.cluster

# Failures of the controller suites that are not about permissions (no request was refused)
# but races the slower, rate-limited identity exposes: API priority and fairness exempts the
# admin (system:masters) and queues ServiceAccounts. Reported to the controller's owner.
KNOWN_RACES = {
    "tests/cluster/test_trainingjob_controller.py::test_suspend_removes_pods_and_resume_brings_them_back": (
        "the pods the Job controller kills on suspend (exit 137) are sometimes counted as a UserError "
        "and the gang restarts (attempt 2) instead of resuming"
    ),
}
RBAC_REFUSAL = re.compile(r'forbidden: User "system:serviceaccount:[^"]+" cannot')


@pytest.fixture(scope="module")
def release(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart in cluster-wide mode; no operator pods (only its identity and rules matter here)."""
    name = f"cx-rbac-{uuid.uuid4().hex[:6]}"
    rel = install(cluster, tmp_path_factory.mktemp("rbac"), name, {"replicaCount": 0})
    yield rel
    uninstall(cluster, rel)


@pytest.mark.parametrize(
    "suite", ["tests/cluster/test_trainingjob_controller.py", "tests/cluster/test_modelservice_controller.py"]
)
def test_controller_tests_pass_as_the_charts_service_account(
    cluster: ClusterHandle, release: Release, suite: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "COXSWAIN_OPERATOR_KUBECONFIG": str(release.kubeconfig),
        # The operator fixture keeps its log under the temporary directory: read it after.
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cluster", suite],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    logs = list(tmp_path.glob("coxswain-operator-*/operator.log"))
    assert logs, f"the operator never started:\n{result.stdout[-3000:]}"
    refusals = [
        line
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if RBAC_REFUSAL.search(line)
    ]
    assert not refusals, "the chart's rules refused the operator:\n" + "\n".join(refusals[:10])
    failed = set(re.findall(r"^FAILED (\S+)", result.stdout, re.MULTILINE))
    if failed and failed <= set(KNOWN_RACES):
        pytest.xfail("; ".join(f"{test}: {KNOWN_RACES[test]}" for test in sorted(failed)))
    assert result.returncode == 0, f"{suite} failed as {release.user}:\n{result.stdout[-5000:]}"


def _can_i(cluster: ClusterHandle, release: Release, *args: str) -> str:
    result = cluster.kubectl("auth", "can-i", *args, f"--as={release.user}", check=False)
    return result.stdout.strip()


# (what, `kubectl auth can-i` arguments, real request: method, path, body)
def _must_not(release: Release) -> list[tuple[str, list[str], tuple[str, str, object]]]:
    ns, sa = release.namespace, release.service_account
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "x", "image": "x"}]},
    }
    return [
        (
            "read Secrets in its own namespace",
            ["get", "secrets", "-n", ns],
            ("GET", f"/api/v1/namespaces/{ns}/secrets", None),
        ),
        (
            "list Secrets elsewhere",
            ["list", "secrets", "-n", "kube-system"],
            ("GET", "/api/v1/namespaces/kube-system/secrets", None),
        ),
        ("list Secrets cluster-wide", ["list", "secrets", "-A"], ("GET", "/api/v1/secrets", None)),
        (
            "create ClusterRoles",
            ["create", "clusterroles"],
            (
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                {"metadata": {"name": "x"}, "rules": []},
            ),
        ),
        (
            "bind roles to itself",
            ["create", "rolebindings", "-n", ns],
            (
                "POST",
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
                {
                    "metadata": {"name": "x"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "cluster-admin",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
                },
            ),
        ),
        ("delete nodes", ["delete", "nodes"], ("DELETE", "/api/v1/nodes/no-such-node", None)),
        (
            "exec into pods",
            ["create", "pods", "--subresource=exec", "-n", ns],
            ("POST", f"/api/v1/namespaces/{ns}/pods/x/exec?command=sh", None),
        ),
        ("create pods itself", ["create", "pods", "-n", ns], ("POST", f"/api/v1/namespaces/{ns}/pods", pod)),
        ("delete pods", ["delete", "pods", "-n", ns], ("DELETE", f"/api/v1/namespaces/{ns}/pods/x", None)),
        (
            "read pod logs",
            ["get", "pods", "--subresource=log", "-n", ns],
            ("GET", f"/api/v1/namespaces/{ns}/pods/x/log", None),
        ),
        (
            "delete namespaces",
            ["delete", "namespaces"],
            ("DELETE", "/api/v1/namespaces/no-such-namespace", None),
        ),
        (
            "create CRDs",
            ["create", "customresourcedefinitions"],
            ("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", {"metadata": {"name": "x"}}),
        ),
        (
            "mint tokens",
            ["create", "serviceaccounts", "--subresource=token", "-n", ns],
            ("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", {}),
        ),
        (
            "delete ModelServices",
            ["delete", "modelservices.coxswain.dev", "-n", ns],
            ("DELETE", f"/apis/coxswain.dev/v1alpha1/namespaces/{ns}/modelservices/x", None),
        ),
        (
            "take another operator's Lease",
            ["update", "leases.coordination.k8s.io/someone-else", "-n", ns],
            (
                "PUT",
                f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/someone-else",
                {"metadata": {"name": "someone-else"}, "spec": {}},
            ),
        ),
        (
            "delete Deployments",
            ["delete", "deployments", "-n", ns],
            ("DELETE", f"/apis/apps/v1/namespaces/{ns}/deployments/x", None),
        ),
    ]


def test_what_the_operator_must_not_do_is_refused(cluster: ClusterHandle, release: Release) -> None:
    for what, can_i, (method, path, body) in _must_not(release):
        assert _can_i(cluster, release, *can_i) == "no", f"RBAC allows the operator to {what}"
        status = release.request(method, path, body)
        assert status == 403, f"{what}: {method} {path} answered {status}, not 403 Forbidden"
    assert release.request("GET", "/api/v1/namespaces", headers={"Impersonate-User": "system:admin"}) == 403


def test_what_it_needs_is_allowed(cluster: ClusterHandle, release: Release) -> None:
    """The refusals above are not an artefact of a broken token: the same identity works."""
    ns = release.namespace
    assert _can_i(cluster, release, "patch", "trainingjobs.coxswain.dev/status", "-n", ns) == "yes"
    assert _can_i(cluster, release, "create", "jobs.batch", "-n", ns) == "yes"
    assert release.request("GET", f"/apis/coxswain.dev/v1alpha1/namespaces/{ns}/trainingjobs") == 200
    assert release.request("GET", f"/api/v1/namespaces/{ns}/pods") == 200


def test_children_that_block_their_owners_deletion_can_be_created(
    cluster: ClusterHandle, release: Release
) -> None:
    """Issue 15: the local API server runs OwnerReferencesPermissionEnforcement, which refuses
    `blockOwnerDeletion: true` to whoever may not update the owner's finalizers."""
    ns = release.namespace
    owners = {
        "trainingjobs": {
            "apiVersion": "coxswain.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "owner"},
            "spec": {"task": {"builtin": {"model": "mlp", "dataset": "digits"}}},
        },
        "modelservices": {
            "apiVersion": "coxswain.dev/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": "owner"},
            "spec": {"model": {"uri": "pvc://models/digits"}, "versions": {"stable": "v1"}},
        },
    }
    for plural, owner in owners.items():
        created = cluster.kubectl("create", "-n", ns, "-o", "json", "-f", "-", stdin=json.dumps(owner))
        uid = json.loads(created.stdout)["metadata"]["uid"]
        child = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"child-of-{plural}",
                "ownerReferences": [
                    {
                        "apiVersion": owner["apiVersion"],
                        "kind": owner["kind"],
                        "name": "owner",
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
        }
        status = release.request("POST", f"/api/v1/namespaces/{ns}/configmaps", child)
        assert status == 201, f"a child of a {owner['kind']} with blockOwnerDeletion answered {status}"
        cluster.kubectl("delete", plural, "owner", "-n", ns, "--wait=false")
