"""A real Kueue in the local cluster (`coxswain dev cluster up --kueue`).

Kueue's manager is built from the Go module proxy (`dev/build-tools.sh kueue`, which also
copies the module's CRDs and webhook configurations beside the binary) and runs as one more
local process. What differs from Kueue's own install, and why:
- its webhooks are reached by URL on 127.0.0.1 with a serving certificate signed by the
  cluster's CA (the caBundle), not through a Service: the API server here runs on the host and
  no Service can point at loopback, so Kueue's own certificate manager is off;
- only the `batch/job` integration is on, and only the webhooks it serves (Jobs and Kueue's
  own kinds) are registered: a registered webhook nobody answers would refuse every pod;
- Kueue reads its metrics certificate from a fixed path, /etc/kueue/metrics/certs; it runs in
  a mount namespace of its own whose /etc is an overlay holding that file, so nothing is
  written to the host's /etc and several clusters on one machine do not share it;
- one manager, no leader election, everything bound to 127.0.0.1 on ports picked at `up`.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from lightkube import ApiError, Client
from lightkube.codecs import from_dict
from lightkube.generic_resource import create_global_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from coxswain.devcluster.components import Component
from coxswain.devcluster.crds import wait_established
from coxswain.devcluster.kubeconfig import write_kubeconfig
from coxswain.devcluster.kwok_nodes import KWOK_NODE_SELECTOR, NODE_POOL_LABEL
from coxswain.devcluster.pki import issue_client_cert, issue_loopback_server_cert, pki_layout
from coxswain.devcluster.realnode import REAL_NODE_LABEL
from coxswain.devcluster.state import ClusterPaths

log = logging.getLogger("coxswain.devcluster")

NAMESPACE = "kueue-system"
PORT_NAMES = ("kueue-webhook", "kueue-health", "kueue-metrics")
GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
# The webhooks of the kinds the batch/job integration needs; every other rule (pods,
# Deployments, Ray, Kubeflow...) belongs to an integration that is off.
SERVED_GROUPS = {"batch", GROUP}
# ResourceFlavors for the kwok node pools and the real nodes: a workload admitted under one
# gets its nodeLabels as nodeSelector, so it lands on that pool's (fake or real) nodes.
FLAVORS: dict[str, dict[str, str]] = {
    "kwok-gpu": {NODE_POOL_LABEL: "gpu", **KWOK_NODE_SELECTOR},
    "kwok-cpu": {NODE_POOL_LABEL: "cpu", **KWOK_NODE_SELECTOR},
    "real-node": {REAL_NODE_LABEL: "true"},
}

ResourceFlavor = create_global_resource(GROUP, VERSION, "ResourceFlavor", "resourceflavors")
ClusterQueue = create_global_resource(GROUP, VERSION, "ClusterQueue", "clusterqueues")


class KueueError(RuntimeError):
    """Kueue's manifests are missing or the API server refused them."""


def _work_dir(paths: ClusterPaths) -> Path:
    return paths.run_dir / "kueue"


def config_dir(bin_dir: Path) -> Path:
    """The CRDs and webhook manifests dev/build-tools.sh copied out of Kueue's module."""
    return bin_dir / "config"


def prepare(paths: ClusterPaths, ports: dict[str, int]) -> Path:
    """Certificates, kubeconfig, configuration and the /etc overlay Kueue starts with.
    Returns the configuration file."""
    work = _work_dir(paths)
    shutil.rmtree(work, ignore_errors=True)
    certs = work / "webhook-certs"
    metrics = work / "etc-upper" / "kueue" / "metrics" / "certs"
    for d in (certs, metrics, work / "etc-work"):
        d.mkdir(parents=True)
    serving = issue_loopback_server_cert(paths.pki_dir, "kueue-serving", "kueue-webhook")
    for target in (certs, metrics):
        shutil.copy(serving.cert, target / "tls.crt")
        shutil.copy(serving.key, target / "tls.key")
    # system:masters: Kueue's own ClusterRole is long and version-bound; this is a dev cluster.
    client = issue_client_cert(paths.pki_dir, "kueue", "kueue", "system:masters")
    pki = pki_layout(paths.pki_dir)
    write_kubeconfig(
        work / "kubeconfig", f"https://127.0.0.1:{ports['apiserver']}", pki.ca.cert, client, "kueue"
    )
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['kueue-health']}"},
        "metrics": {"bindAddress": f"127.0.0.1:{ports['kueue-metrics']}"},
        "webhook": {"host": "127.0.0.1", "port": ports["kueue-webhook"], "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        # Tests create many Jobs at once; Kueue's default 20 QPS would pace admission.
        "clientConnection": {"qps": 200, "burst": 400},
        "integrations": {"frameworks": ["batch/job"]},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def component(bin_dir: Path, paths: ClusterPaths, ports: dict[str, int]) -> Component:
    work = _work_dir(paths)
    # unshare execs the shell, the shell execs kueue: one PID throughout, so `down` and the
    # state file see the manager itself.
    overlay = (
        'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc && shift 2 && exec "$@"'
    )
    user_ns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return Component(
        name="kueue",
        argv=[
            "unshare",
            *user_ns,
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            overlay,
            "kueue-overlay",
            str(work / "etc-upper"),
            str(work / "etc-work"),
            str(bin_dir / "kueue"),
            f"--config={work / 'config.yaml'}",
            f"--kubeconfig={work / 'kubeconfig'}",
            # The on-demand visibility API is an aggregated API server of its own: not needed.
            "--feature-gates=VisibilityOnDemand=false",
        ],
        health_url=f"http://127.0.0.1:{ports['kueue-health']}/readyz",
        env={"KUBECONFIG": str(work / "kubeconfig")},
    )


def _ca_bundle(paths: ClusterPaths) -> str:
    return base64.b64encode(pki_layout(paths.pki_dir).ca.cert.read_bytes()).decode()


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise KueueError(f"{path} is missing: run `bash dev/build-tools.sh kueue` to build Kueue")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def install_crds(client: Client, bin_dir: Path, paths: ClusterPaths, ports: dict[str, int]) -> list[str]:
    """Apply Kueue's CRDs; those with several versions convert through Kueue's /convert."""
    crd_dir = config_dir(bin_dir) / "crd"
    names: list[str] = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in _load(path):
            if len(doc["spec"]["versions"]) > 1:
                doc["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": {
                            "url": f"https://127.0.0.1:{ports['kueue-webhook']}/convert",
                            "caBundle": _ca_bundle(paths),
                        },
                        "conversionReviewVersions": ["v1"],
                    },
                }
            try:
                client.apply(from_dict(doc), force=True)
            except ApiError as e:
                raise KueueError(f"{path.name}: the API server refused it: {e.status.message}") from e
            names.append(doc["metadata"]["name"])
    if not names:
        raise KueueError(f"no CRDs in {crd_dir}: run `bash dev/build-tools.sh kueue` to build Kueue")
    wait_established(client, names)
    try:
        client.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
    except ApiError as e:
        if e.status.code != 409:
            raise
    return names


def webhook_configurations(bin_dir: Path, paths: ClusterPaths, ports: dict[str, int]) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, cut to the served webhooks and pointed at loopback."""
    docs = _load(config_dir(bin_dir) / "webhook" / "manifests.yaml")
    bundle = _ca_bundle(paths)
    for doc in docs:
        doc["metadata"]["name"] = f"kueue-{doc['metadata']['name']}"
        kept = []
        for hook in doc["webhooks"]:
            groups = {g for rule in hook.get("rules", []) for g in rule.get("apiGroups", [])}
            if not groups <= SERVED_GROUPS:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {
                "url": f"https://127.0.0.1:{ports['kueue-webhook']}{path}",
                "caBundle": bundle,
            }
            kept.append(hook)
        doc["webhooks"] = kept
    return docs


def install_webhooks(client: Client, bin_dir: Path, paths: ClusterPaths, ports: dict[str, int]) -> None:
    """Register the webhooks (after Kueue serves them: they fail closed) and the flavors."""
    for doc in webhook_configurations(bin_dir, paths, ports):
        client.apply(from_dict(doc), force=True)
    for name, labels in FLAVORS.items():
        flavor = ResourceFlavor(metadata=ObjectMeta(name=name), spec={"nodeLabels": labels})
        # The webhook has just been registered: the API server may need a moment to call it.
        deadline = time.monotonic() + 30
        while True:
            try:
                client.apply(flavor, force=True)
                break
            except ApiError as e:
                if time.monotonic() > deadline:
                    raise KueueError(f"ResourceFlavor {name} refused: {e.status.message}") from e
                time.sleep(0.5)
    log.info("Kueue is up: batch/job integration, ResourceFlavors %s", ", ".join(FLAVORS))
