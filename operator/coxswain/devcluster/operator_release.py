"""The operator installed from its chart with its image, as a user installs it: `helm upgrade
--install` of helm/coxswain into a cluster with real nodes that hold the operator image
(`make images`, then `DevCluster.load_image`). The demo and the real-node tests use it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[3] / "helm" / "coxswain"
# The uid of every Coxswain image, the chart's pod security context and the operator's pods.
IMAGE_UID = 1000


class ReleaseError(RuntimeError):
    """helm could not install the chart; the message has helm's output and where to look."""


def dev_values(operator_digest: str, watch: list[str], host_path_prefixes: list[str]) -> dict[str, Any]:
    """Values for a local cluster: one replica (a real node has this machine's 2 CPUs), no
    pulls (nothing is reachable), hostPath under the given prefixes only, and the image digest
    as a pod annotation so a rebuilt operator image under the same tag rolls the pod."""
    return {
        "replicaCount": 1,
        "image": {"pullPolicy": "Never"},
        "watchNamespaces": watch,
        "logFormat": "plain",
        "tenancy": {"hostPath": {"allowed": bool(host_path_prefixes), "prefixes": host_path_prefixes}},
        "podAnnotations": {"coxswain.dev/image-digest": operator_digest},
        # One activator (scale from zero) is enough on 2 CPUs.
        "activator": {"replicas": 1},
    }


def helm_upgrade_install(
    bin_dir: Path,
    kubeconfig: Path,
    release: str,
    namespace: str,
    values: dict[str, Any],
    values_file: Path,
    timeout_s: int = 300,
) -> str:
    """`helm upgrade --install --wait`; returns helm's output."""
    values_file.write_text(yaml.safe_dump(values))
    command = [
        str(bin_dir / "helm"), "upgrade", "--install", release, str(CHART),
        "--namespace", namespace, "--create-namespace", "--kubeconfig", str(kubeconfig),
        "--values", str(values_file), "--wait", "--timeout", f"{timeout_s}s",
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ReleaseError(
            f"helm upgrade --install {release} failed:\n{result.stdout}{result.stderr}\n"
            f"the operator's log: {bin_dir / 'kubectl'} --kubeconfig {kubeconfig} logs -n {namespace} "
            f"deploy/{release}"
        )
    return result.stdout


def helm_uninstall(bin_dir: Path, kubeconfig: Path, release: str, namespace: str) -> None:
    subprocess.run(
        [str(bin_dir / "helm"), "uninstall", release, "--namespace", namespace, "--kubeconfig",
         str(kubeconfig), "--wait", "--ignore-not-found"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
