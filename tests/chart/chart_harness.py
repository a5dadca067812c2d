"""Rendering, installing and impersonating the chart (helm/coxswain) in tests.

Helper module with a unique name: test directories share one import namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from operator_fixtures import free_port

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "coxswain"
RULES_FILE = CHART / "rules" / "coxswain-alerts.yaml"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# The chart's kubeVersion is >=1.30; `helm template` assumes 1.20 unless told.
KUBE_VERSION = "1.35.0"
MONITORS_ON = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "podMonitors": {"enabled": True},
        "prometheusRule": {"enabled": True},
    }
}


def helm_binary() -> Path:
    from coxswain.devcluster.binaries import locate_binaries

    return locate_binaries() / "helm"


def helm(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def values_args(values: dict[str, Any] | None, tmp: Path) -> list[str]:
    if not values:
        return []
    path = tmp / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def render(
    tmp: Path, values: dict[str, Any] | None = None, release: str = "cx", namespace: str = "coxswain-system"
) -> list[dict[str, Any]]:
    """The objects `helm template` makes (CRDs included, as `helm install` would apply them)."""
    out = helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        "--include-crds",
        *values_args(values, tmp),
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def is_activator(obj: dict[str, Any]) -> bool:
    return str(obj["metadata"]["name"]).endswith("-activator")


def find(
    objs: list[dict[str, Any]], kind: str, name: str | None = None, activator: bool = False
) -> list[dict[str, Any]]:
    """Objects of `kind` (and `name`): the operator's, or with `activator` the activator's
    (its Deployment, Service, ServiceAccount and RBAC, all named <release>-activator)."""
    return [
        o
        for o in objs
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (name is not None or is_activator(o) == activator)
    ]


def rules_of(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    found = find(objs, kind)
    assert len(found) >= 1, f"no {kind} rendered"
    return [rule for obj in found for rule in obj["rules"]]


def service_account_kubeconfig(
    admin_kubeconfig: Path, kubectl: Any, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as system:serviceaccount:<namespace>:<account> with a
    bound token from the TokenRequest API (what a pod of that ServiceAccount gets)."""
    token = kubectl("create", "token", account, "-n", namespace, "--duration", "2h").stdout.strip()
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": account,
                "context": {"cluster": cluster["name"], "user": account, "namespace": namespace},
            }
        ],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every query of every dashboard panel and template variable."""
    queries = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                queries.append((f"{path.name}: {panel['title']} ({target['refId']})", target["expr"]))
    return queries


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES_FILE.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def concrete(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard query as Grafana sends it: variables replaced (all namespaces selected)."""
    return expr.replace("$__rate_interval", rate_interval).replace("$namespace", ".*")


@dataclass
class Release:
    """A release of the chart on the local cluster and the identity of its ServiceAccount."""

    name: str
    namespace: str
    service_account: str
    kubeconfig: Path  # authenticates as the ServiceAccount

    @property
    def fullname(self) -> str:
        """The Deployment's, ServiceAccount's and RBAC objects' name (coxswain.fullname)."""
        return self.name if "coxswain" in self.name else f"{self.name}-coxswain"

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> int:
        """One real API request as the ServiceAccount; returns the HTTP status."""
        import base64
        import ssl

        import httpx

        config = yaml.safe_load(self.kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        token = config["users"][0]["user"]["token"]
        context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        response = httpx.request(
            method,
            cluster["server"] + path,
            json=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type, **(headers or {})},
            verify=context,
            timeout=30,
        )
        return response.status_code


def install(
    cluster: Any, tmp: Path, name: str, values: dict[str, Any], namespace: str | None = None
) -> Release:
    """`helm install` (CRDs are already applied by the cluster fixture, as helm would skip them)."""
    namespace = namespace or name
    helm(
        "install",
        name,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
        *values_args(values, tmp),
        env=cluster.env(),
    )
    account = name if "coxswain" in name else f"{name}-coxswain"
    kubeconfig = service_account_kubeconfig(
        cluster.kubeconfig, cluster.kubectl, namespace, account, tmp / f"{name}.kubeconfig"
    )
    return Release(name, namespace, account, kubeconfig)


def uninstall(cluster: Any, release: Release) -> None:
    helm(
        "uninstall", release.name, "--namespace", release.namespace, "--wait", env=cluster.env(), check=False
    )
    cluster.kubectl(
        "delete", "namespace", release.namespace, "--wait=false", "--ignore-not-found", check=False
    )


class Replica:
    """The operator Deployment's own container command and arguments, read back from the
    cluster and run as a local process with the ServiceAccount's token: what its pod would
    run, where the pod itself cannot (kwok nodes only pretend; the node agent gives pods no
    route to the API server)."""

    def __init__(self, cluster: Any, release: Release, pod_id: str, log: Path, own_ports: bool) -> None:
        deploy = json.loads(
            cluster.kubectl(
                "get", "deployment", release.fullname, "-n", release.namespace, "-o", "json"
            ).stdout
        )
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.health_port = ports["health"]
        args = list(container["args"])
        if own_ports:
            # Pods each have a network namespace; two local processes need two port pairs.
            self.health_port = free_port()
            args[-1] = (
                args[-1]
                .replace(f"--health-port {ports['health']}", f"--health-port {self.health_port}")
                .replace(f"--metrics-port {ports['metrics']}", f"--metrics-port {free_port()}")
            )
        self.pod_id = pod_id
        env = {
            **cluster.env(),
            # The container's plain env (PYTHONUNBUFFERED: its log reaches the file at once).
            **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e},
            "KUBECONFIG": str(release.kubeconfig),
            "POD_ID": pod_id,
            # What the Deployment's fieldRef gives the pod: the Lease lives there.
            "POD_NAMESPACE": release.namespace,
            # The image's PATH: this project's environment stands in for the operator image.
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                container["command"] + args, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.log = log

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def delete_custom_objects(cluster: Any, namespace: str, timeout: float = 90) -> None:
    """Delete the namespace's TrainingJobs and ModelServices and wait until they are gone
    (they carry no finalizer: nothing waits for the operator)."""
    from cluster_fixtures import wait_for
    from coxswain.kube import MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE

    resources = (TRAININGJOB_RESOURCE, MODELSERVICE_RESOURCE)
    for resource in resources:
        for obj in cluster.client.list(resource, namespace=namespace):
            cluster.client.delete(resource, obj.metadata.name, namespace=namespace)
    wait_for(
        lambda: all(not list(cluster.client.list(r, namespace=namespace)) for r in resources) or None,
        timeout,
        f"TrainingJobs and ModelServices of {namespace} deleted",
    )
