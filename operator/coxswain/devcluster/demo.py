"""`coxswain dev demo` (`make demo`): the whole thing on this machine, start to finish, the way a
platform team runs it.

The three images (`make images`: an unchanged tree rebuilds nothing), a control plane of its own
(its own cluster directory) with one real node (kubelet + containerd, no kwok nodes, so every pod
really runs in a container), the images imported into it (only those the node lacks), the
operator installed from the chart with `helm upgrade --install` (its image, ServiceAccount and
RBAC); then the digits CNN trains on 2 pods of the trainer image with a live progress view, is
exported to a model repository on disk, served from the server image by a ModelService that
names the TrainingJob, and asked for a prediction. Run it again and it reuses the cluster, the
images and the release (and starts a fresh job).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, ServiceAccount
from lightkube.resources.discovery_v1 import EndpointSlice

from coxswain.cli.dev import cluster_command
from coxswain.cli.inspect import progress_line
from coxswain.devcluster import DevCluster
from coxswain.devcluster.bootstrap import make_client
from coxswain.devcluster.crds import apply_crds, wait_established
from coxswain.devcluster.operator_release import IMAGE_UID, ReleaseError, dev_values, helm_upgrade_install
from coxswain.kube import MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE

REPO = Path(__file__).resolve().parents[3]
NAMESPACE = "coxswain-demo"
RELEASE = "coxswain"
RELEASE_NAMESPACE = "coxswain-system"
JOB = "digits-cnn"
SERVICE = "digits"
# One real node has this machine's 2 CPUs: the operator (100m) and 2 ranks fit, then (after
# training, whose pods then hold nothing) up to 2 servers.
TRAINER_CPU = "800m"
SERVER_CPU = "500m"
TRAIN_TIMEOUT = 1800.0


def say(message: str) -> None:
    print(f"\033[1m==>\033[0m {message}", flush=True)


def trainingjob(data: Path, epochs: int) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": JOB},
        "spec": {
            # No image: the CRD's default, the trainer image `make images` built and the node holds.
            "task": {"builtin": {"model": "cnn", "dataset": "digits", "dropout": 0.1}},
            "nodes": 2,
            "procsPerNode": 1,
            "resources": {"cpu": TRAINER_CPU, "memory": "1Gi"},
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
            "resources": {"cpu": SERVER_CPU, "memory": "1Gi"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
            "versions": {"stable": "v1"},
        },
    }


def _wait(what: str, probe: Callable[[], Any], timeout: float, hint: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except ApiError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; {hint}")


def _operator_hint(kubeconfig: Path, bin_dir: Path) -> str:
    return (
        f"the operator's log: KUBECONFIG={kubeconfig} {bin_dir / 'kubectl'} logs -n {RELEASE_NAMESPACE} "
        f"deploy/{RELEASE}"
    )


def _delete_previous(client: Client, hint: str) -> None:
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

        _wait(f"the previous {name} to go", gone, 120, hint)


def _train(client: Client, data: Path, epochs: int, hint: str) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    client.create(TRAININGJOB_RESOURCE.from_dict(trainingjob(data, epochs)), namespace=NAMESPACE)
    say(
        f"TrainingJob {JOB}: digits CNN on 2 pods x 1 process of the trainer image (torchrun, gloo); "
        f"watch it with `kubectl get tj -n {NAMESPACE}`"
    )
    applied = time.monotonic()
    deadline = applied + TRAIN_TIMEOUT
    # Seconds from apply to: both pods Running, the first training step reported.
    marks: dict[str, float] = {}
    with Progress(
        TextColumn(f"[bold]{JOB}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[line]}"),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task("train", total=1.0, line="waiting for the operator")
        while True:
            obj = dict(client.get(TRAININGJOB_RESOURCE, JOB, namespace=NAMESPACE))
            fraction, line = progress_line(obj)
            phase = (obj.get("status") or {}).get("phase")
            bar.update(task, completed=fraction or 0.0, line=line)
            if phase == "Running":
                marks.setdefault("pods Running", time.monotonic() - applied)
            if ((obj.get("status") or {}).get("progress") or {}).get("step"):
                marks.setdefault("first step reported", time.monotonic() - applied)
            if phase in ("Succeeded", "Failed"):
                if phase == "Succeeded":
                    bar.update(task, completed=1.0)
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"training did not finish in {TRAIN_TIMEOUT:.0f} s; {hint}")
            time.sleep(1)
    marks["finished"] = time.monotonic() - applied
    print("    apply -> " + ", ".join(f"{what} {seconds:.0f} s" for what, seconds in marks.items()))
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


def _serve_and_predict(client: Client, hint: str) -> None:
    client.create(MODELSERVICE_RESOURCE.from_dict(modelservice()), namespace=NAMESPACE)
    say(
        f"ModelService {SERVICE} serves the TrainingJob's export from the server image; waiting until it is Ready"
    )

    def ready() -> dict[str, Any] | None:
        obj = dict(client.get(MODELSERVICE_RESOURCE, SERVICE, namespace=NAMESPACE))
        conditions = (obj.get("status") or {}).get("conditions", [])
        return obj if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None

    obj = _wait(f"ModelService {SERVICE} to be Ready", ready, 300, hint)
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

    # The pod's own address: this machine routes the real node's pod range to its bridge.
    base = _wait("a ready endpoint", endpoint, 60, hint)
    from sklearn.datasets import load_digits

    digits = load_digits()
    instances = [digits.data[i].tolist() for i in range(3)]  # 64 raw pixel values each
    response = httpx.post(f"{base}/v1/models/{JOB}:predict", json={"instances": instances}, timeout=30)
    response.raise_for_status()
    body = response.json()
    say(f"POST {base}/v1/models/{JOB}:predict with 3 digits (labels {[int(t) for t in digits.target[:3]]}):")
    print("    " + json.dumps(body)[:600])
    print(f"    served by version {response.headers.get('x-coxswain-version')}")


def _images() -> Any:
    from coxswain.devimages import BuildError, build_images

    began = time.monotonic()
    try:
        built = build_images()
    except BuildError as exc:
        raise SystemExit(f"building the images failed: {exc}") from exc
    what = "built" if built.built else "unchanged, nothing rebuilt"
    print(f"    {what} in {time.monotonic() - began:.0f} s: {built.layout}")
    return built


def _own_dirs(data: Path) -> None:
    """Fresh checkpoint and model directories the images' uid can write (a previous run's
    checkpoints would make the new job resume from the old one's last step)."""
    shutil.rmtree(data / "checkpoints", ignore_errors=True)
    for sub in ("checkpoints", "models"):
        (data / sub).mkdir(parents=True, exist_ok=True)
        for path in [data / sub, *(data / sub).rglob("*")]:
            os.chown(path, IMAGE_UID, IMAGE_UID, follow_symlinks=False)


def run(epochs: int = 20, keep: bool = False) -> int:
    started = time.monotonic()
    data = Path(os.environ.get("COXSWAIN_DEMO_DIR", Path.home() / ".cache" / "coxswain" / "demo"))
    data.mkdir(parents=True, exist_ok=True)
    say("images: operator, trainer, server (`make images`; an unchanged tree rebuilds nothing)")
    built = _images()
    say("local control plane with one real node: kubelet + containerd (built on first use, then cached)")
    dev = DevCluster(data / "cluster")
    state = dev.up(gpu_nodes=0, cpu_nodes=0, real_nodes=1, timeout=600)
    client = make_client(dev.paths.kubeconfig)
    wait_established(client, apply_crds(client, REPO / "crds"))
    print(f"    export KUBECONFIG={dev.paths.kubeconfig}   # for kubectl (in {state.bin_dir})")
    began = time.monotonic()
    imported = dev.load_image(built.layout)
    print(
        f"    images in the node's containerd: imported {', '.join(imported) or 'nothing (all present)'} "
        f"in {time.monotonic() - began:.0f} s"
    )
    hint = _operator_hint(dev.paths.kubeconfig, state.bin_dir)
    try:
        client.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    operator_digest = next(i.digest for i in built.images if "/operator:" in i.ref)
    say(
        f"operator: helm upgrade --install {RELEASE} helm/coxswain -n {RELEASE_NAMESPACE} (its image, ServiceAccount, RBAC)"
    )
    began = time.monotonic()
    try:
        helm_upgrade_install(
            state.bin_dir,
            dev.paths.kubeconfig,
            RELEASE,
            RELEASE_NAMESPACE,
            dev_values(operator_digest, [NAMESPACE], [str(data)]),
            data / "helm-values.yaml",
        )
    except ReleaseError as exc:
        raise SystemExit(str(exc)) from exc
    deploy = client.get(Deployment, RELEASE, namespace=RELEASE_NAMESPACE)
    print(
        f"    {deploy.status.readyReplicas if deploy.status else 0} operator pod ready in "
        f"{time.monotonic() - began:.0f} s; {hint}"
    )
    _wait(
        "the namespace's ServiceAccount",
        lambda: client.get(ServiceAccount, "default", namespace=NAMESPACE),
        60,
        hint,
    )
    _delete_previous(client, hint)
    _own_dirs(data)

    status = _train(client, data, epochs, hint)
    _show_export(status, data)
    _serve_and_predict(client, hint)
    say(f"done in {time.monotonic() - started:.0f} s")
    down = cluster_command("down", data / "cluster")
    if keep:
        say(f"left running: the operator and the ModelService; `{down}` stops the cluster")
    else:
        client.delete(MODELSERVICE_RESOURCE, SERVICE, namespace=NAMESPACE)
        say(
            f"deleted the ModelService; the operator stays installed "
            f"(`{state.bin_dir / 'helm'} uninstall {RELEASE} -n {RELEASE_NAMESPACE} --kubeconfig {dev.paths.kubeconfig}` "
            f"removes it) and the cluster stays up (`{down}` stops it)"
        )
    return 0
