"""`coxswain dev demo` (`make demo`): the whole thing on this machine, start to finish.

A control plane of its own (its own cluster directory, no kwok nodes, so every pod lands
on the node agent and really runs), the node agent, the operator; then the digits CNN
trains on 2 nodes with a live progress view, is exported to a model repository on disk,
served by a ModelService that names the TrainingJob, and asked for a prediction.
Run it again and it reuses the cluster (and starts a fresh job).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, ServiceAccount
from lightkube.resources.discovery_v1 import EndpointSlice

from coxswain.cli.dev import cluster_command
from coxswain.cli.inspect import progress_line
from coxswain.devcluster import DevCluster
from coxswain.devcluster.bootstrap import make_client
from coxswain.devcluster.crds import apply_crds, wait_established
from coxswain.kube import MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE

REPO = Path(__file__).resolve().parents[3]
NAMESPACE = "coxswain-demo"
NODE = "demo-0"
AGENT_LABEL = "coxswain.dev/agent"
JOB = "digits-cnn"
SERVICE = "digits"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(message: str) -> None:
    print(f"\033[1m==>\033[0m {message}", flush=True)


@dataclass
class Background:
    """The agent and the operator, as child processes we stop when the demo ends."""

    logs: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-20:]
                raise SystemExit(
                    f"the {name} exited with {proc.returncode}; last lines of {self.logs / name}.log:\n"
                    + "\n".join(tail)
                )

    def stop(self) -> None:
        # Reverse order: the operator first, then the agent, which stops every pod process.
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def trainingjob(data: Path, epochs: int) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": JOB},
        "spec": {
            "task": {"builtin": {"model": "cnn", "dataset": "digits", "dropout": 0.1}},
            "nodes": 2,
            "procsPerNode": 1,
            "nodeSelector": {AGENT_LABEL: NODE},
            "resources": {"cpu": "1", "memory": "1Gi"},
            "seed": 7,
            "optimization": {
                "batchSize": 128,
                "epochs": epochs,
                "optimizer": {"name": "adamw", "learningRate": 0.003, "weightDecay": 0.01},
                "schedule": {"type": "cosine", "warmupSteps": 10},
            },
            "evaluation": {"split": 0.2},
            "checkpoint": {
                "intervalSteps": 50,
                "keep": 2,
                "volume": {"hostPath": {"path": str(data / "checkpoints")}},
            },
            "export": {"repository": {"hostPath": {"path": str(data / "models")}}, "modelName": JOB},
            "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 2, "maxBackoffSeconds": 10},
        },
    }


def modelservice() -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": SERVICE},
        "spec": {
            "model": {"trainingJobRef": {"name": JOB}},
            "resources": {"cpu": "1", "memory": "1Gi"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
            "versions": {"stable": "v1"},
        },
    }


def _wait(what: str, probe: Any, timeout: float, background: Background) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        background.check()
        try:
            value = probe()
        except ApiError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; logs are in {background.logs}")


def _delete_previous(client: Client, background: Background) -> None:
    for resource, name in ((MODELSERVICE_RESOURCE, SERVICE), (TRAININGJOB_RESOURCE, JOB)):
        try:
            client.delete(resource, name, namespace=NAMESPACE)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            continue

        def gone(resource: Any = resource, name: str = name) -> bool:
            try:
                client.get(resource, name, namespace=NAMESPACE)
            except ApiError as exc:
                return exc.status.code == 404
            return False

        _wait(f"the previous {name} to go", gone, 120, background)


def _train(client: Client, data: Path, epochs: int, background: Background) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    client.create(TRAININGJOB_RESOURCE.from_dict(trainingjob(data, epochs)), namespace=NAMESPACE)
    say(
        f"TrainingJob {JOB}: digits CNN on 2 nodes x 1 process (torchrun, gloo); watch it with `kubectl get tj -n {NAMESPACE}`"
    )
    with Progress(
        TextColumn(f"[bold]{JOB}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[line]}"),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task("train", total=1.0, line="waiting for the operator")
        while True:
            background.check()
            obj = dict(client.get(TRAININGJOB_RESOURCE, JOB, namespace=NAMESPACE))
            fraction, line = progress_line(obj)
            phase = (obj.get("status") or {}).get("phase")
            bar.update(task, completed=fraction or 0.0, line=line)
            if phase in ("Succeeded", "Failed"):
                if phase == "Succeeded":
                    bar.update(task, completed=1.0)
                break
            time.sleep(1)
    status = obj.get("status") or {}
    if status.get("phase") != "Succeeded":
        failed: dict[str, Any] = next((c for c in status.get("conditions", []) if c["type"] == "Failed"), {})
        raise SystemExit(
            f"training failed: {failed.get('message', 'see `coxswain describe tj ' + JOB + ' -n ' + NAMESPACE + '`')}"
        )
    return status


def _show_export(status: dict[str, Any], data: Path) -> None:
    from coxswain.artifacts.repository import read_manifest

    exported = status.get("exportedModel") or {}
    version_dir = data / "models" / exported.get("modelName", JOB) / exported.get("version", "")
    manifest = read_manifest(version_dir)
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(manifest.metrics.items()))
    say(f"exported {manifest.name} {manifest.version} to {version_dir}")
    print(f"    files: {', '.join(sorted(manifest.files))} (sha256 of each in manifest.json)")
    print(f"    eval: {metrics}")


def _serve_and_predict(client: Client, background: Background) -> None:
    client.create(MODELSERVICE_RESOURCE.from_dict(modelservice()), namespace=NAMESPACE)
    say(f"ModelService {SERVICE} serves the TrainingJob's export; waiting until it is Ready")

    def ready() -> dict[str, Any] | None:
        obj = dict(client.get(MODELSERVICE_RESOURCE, SERVICE, namespace=NAMESPACE))
        conditions = (obj.get("status") or {}).get("conditions", [])
        return obj if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None

    obj = _wait(f"ModelService {SERVICE} to be Ready", ready, 300, background)
    status = obj.get("status") or {}
    print(f"    url: {status.get('url')}  ready replicas: {status.get('readyReplicas')}")

    def endpoint() -> str | None:
        for eps in client.list(
            EndpointSlice, namespace=NAMESPACE, labels={"kubernetes.io/service-name": SERVICE}
        ):
            port = next((p.port for p in eps.ports or [] if p.name == "http" and p.port), 8080)
            for ep in eps.endpoints or []:
                if ep.conditions is None or ep.conditions.ready:
                    return f"http://{ep.addresses[0]}:{port}"
        return None

    base = _wait("a ready endpoint", endpoint, 60, background)
    from sklearn.datasets import load_digits

    digits = load_digits()
    instances = [digits.data[i].tolist() for i in range(3)]  # 64 raw pixel values each
    response = httpx.post(f"{base}/v1/models/{JOB}:predict", json={"instances": instances}, timeout=30)
    response.raise_for_status()
    body = response.json()
    say(f"POST {base}/v1/models/{JOB}:predict with 3 digits (labels {[int(t) for t in digits.target[:3]]}):")
    print("    " + json.dumps(body)[:600])
    print(f"    served by version {response.headers.get('x-coxswain-version')}")


def run(epochs: int = 20, keep: bool = False) -> int:
    started = time.monotonic()
    data = Path(os.environ.get("COXSWAIN_DEMO_DIR", Path.home() / ".cache" / "coxswain" / "demo"))
    data.mkdir(parents=True, exist_ok=True)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    say("local control plane (built from the Go module proxy on first use, then cached)")
    dev = DevCluster(data / "cluster")
    state = dev.up(gpu_nodes=0, cpu_nodes=0)
    client = make_client(dev.paths.kubeconfig)
    wait_established(client, apply_crds(client, REPO / "crds"))
    env = {
        **os.environ,
        "KUBECONFIG": str(dev.paths.kubeconfig),
        "PATH": f"{state.bin_dir}:{os.environ['PATH']}",
    }
    print(f"    export KUBECONFIG={dev.paths.kubeconfig}   # for kubectl (in {state.bin_dir})")

    background = Background(logs)
    try:
        say(f"node agent {NODE}: runs pods as local processes, each with its own network namespace")
        background.start(
            "agent",
            [
                sys.executable,
                "-m",
                "coxswain",
                "dev",
                "agent",
                "--node-name",
                NODE,
                "--cpu",
                "4",
                "--memory",
                "8Gi",
                "--labels",
                f"{AGENT_LABEL}={NODE}",
                "--data-dir",
                str(data / "agent"),
                "--kubeconfig",
                str(dev.paths.kubeconfig),
            ],
            env,
        )
        say(f"operator: coxswain operator run (logs in {logs}/operator.log)")
        background.start(
            "operator",
            [
                sys.executable,
                "-m",
                "coxswain",
                "operator",
                "run",
                "--standalone",
                "-n",
                NAMESPACE,
                "--metrics-port",
                str(_free_port()),
                "--health-port",
                str(_free_port()),
                # A development machine: the demo keeps checkpoints and models on its disk.
                "--allow-host-path",
                "--host-path-prefix",
                str(data),
            ],
            env,
        )

        def node_ready() -> bool:
            node = client.get(Node, NODE)
            conditions = (node.status.conditions if node.status else None) or []
            return any(c.type == "Ready" and c.status == "True" for c in conditions)

        _wait(f"node {NODE} to be Ready", node_ready, 60, background)
        try:
            client.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
        except ApiError as exc:
            if exc.status.code != 409:
                raise
        _wait(
            "the namespace's ServiceAccount",
            lambda: client.get(ServiceAccount, "default", namespace=NAMESPACE),
            60,
            background,
        )
        _delete_previous(client, background)

        status = _train(client, data, epochs, background)
        _show_export(status, data)
        _serve_and_predict(client, background)
        say(f"done in {time.monotonic() - started:.0f} s")
        if keep:
            say(
                f"left running: agent and operator (logs in {logs}); `{cluster_command('down', data / 'cluster')}` stops the cluster"
            )
            background.procs.clear()
        else:
            say(
                f"stopping the agent and the operator; the cluster stays up (`{cluster_command('down', data / 'cluster')}` stops it)"
            )
        return 0
    finally:
        background.stop()
