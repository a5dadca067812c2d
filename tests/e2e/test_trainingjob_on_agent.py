"""The real thing: the operator's TrainingJobs run on the node agent with torchrun ranks
meeting over pod networking, progress pulled into status, the model exported, and a killed
rank healed by a whole-gang restart that resumes from the checkpoint."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube.codecs import from_dict
from lightkube.models.apps_v1 import DeploymentStatus
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod

from agent_fixtures import AgentProcess, cmdline, descendants
from cluster_fixtures import ClusterHandle, wait_for
from coxswain.api.modelservice import ModelService
from coxswain.artifacts.repository import read_verified_files
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.modelservice import builders as ms_builders
from coxswain.modelservice.source import ServedModel, resolve
from coxswain.trainingjob import naming
from operator_fixtures import OperatorProcess

pytestmark = pytest.mark.e2e


def cnn_job(name: str, agent: AgentProcess, root: Path, epochs: int, checkpoint_every: int) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "task": {
                "builtin": {"model": "cnn", "dataset": "digits", "channels": [8, 16], "hiddenSizes": [32]}
            },
            "nodes": 2,
            "procsPerNode": 1,
            "nodeSelector": agent.selector,
            "resources": {"cpu": "1", "memory": "1Gi"},
            "optimization": {"batchSize": 128, "epochs": epochs},
            # hostPath volumes: shared by every attempt (resume) and readable by the test.
            "checkpoint": {
                "intervalSteps": checkpoint_every,
                "keep": 2,
                "volume": {"hostPath": {"path": str(root / "ckpt")}},
            },
            "export": {"repository": {"hostPath": {"path": str(root / "models")}}, "modelName": "digits-cnn"},
            "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 1, "maxBackoffSeconds": 2},
        },
    }


def status_of(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    obj = cluster.client.get(TRAININGJOB_RESOURCE, name, namespace=ns)
    return dict(obj.get("status") or {})


def run_to_end(
    cluster: ClusterHandle, ns: str, name: str, timeout: float, on_poll: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll until Succeeded/Failed; returns the last status and every status seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status_of(cluster, ns, name)
        seen.append(st)
        if on_poll is not None:
            on_poll(st)
        if st.get("phase") in ("Succeeded", "Failed"):
            return st, seen
        time.sleep(0.5)
    pytest.fail(
        f"TrainingJob {ns}/{name} did not finish within {timeout:.0f} s; last status {seen[-1] if seen else None}"
    )


def test_cnn_trainingjob_runs_to_succeeded_on_the_agent(
    cluster: ClusterHandle, agent: AgentProcess, operator: OperatorProcess, op_namespace: str, tmp_path: Path
) -> None:
    cluster.client.create(
        TRAININGJOB_RESOURCE(cnn_job("cnn", agent, tmp_path, epochs=150, checkpoint_every=200)),
        namespace=op_namespace,
    )
    final, seen = run_to_end(cluster, op_namespace, "cnn", 300)
    assert final["phase"] == "Succeeded", f"{final}\n{operator.log_tail()}\n{agent.log_tail()}"
    # Progress reached status while the gang was running, and moved.
    running_steps = [
        s["progress"]["step"]
        for s in seen
        if s.get("phase") == "Running" and (s.get("progress") or {}).get("step")
    ]
    assert len(set(running_steps)) >= 2, running_steps
    assert running_steps == sorted(running_steps)
    assert min(running_steps) < final["progress"]["totalSteps"]
    exported = final["exportedModel"]
    assert exported["modelName"] == "digits-cnn"
    manifest, files = read_verified_files(tmp_path / "models" / "digits-cnn" / exported["version"])
    assert manifest.name == "digits-cnn" and files
    serve_on_agent(cluster, agent, op_namespace, tmp_path / "models", exported)


def serve_on_agent(
    cluster: ClusterHandle, agent: AgentProcess, ns: str, repository: Path, exported: dict[str, Any]
) -> None:
    """The serving half: the ModelService builders' Deployment, Service and traffic ConfigMap,
    pinned to the agent (ModelService has no nodeSelector yet), become Ready through the
    server's real startup and readiness probes and answer an inference over the pod network."""
    ms = ModelService.model_validate(
        {
            "apiVersion": "coxswain.dev/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": "digits", "namespace": ns, "uid": "00000000-0000-0000-0000-000000000000"},
            "spec": {
                "model": {"uri": exported["uri"]},
                "repository": {"hostPath": {"path": str(repository)}},
                "versions": {"stable": exported["version"]},
                "resources": {"cpu": "1", "memory": "1Gi"},
            },
        }
    )
    model = resolve(ms, None)
    assert isinstance(model, ServedModel)
    deployment = ms_builders.build_deployment(ms, model, 1)
    deployment["spec"]["template"]["spec"]["nodeSelector"] = agent.selector
    objects = [
        ms_builders.build_traffic_config_map(ms, {exported["version"]: 100}),
        ms_builders.build_service(ms),
        deployment,
    ]
    for obj in objects:
        # No ModelService object exists: an ownerReference to it would get these collected.
        obj["metadata"].pop("ownerReferences", None)
        cluster.client.create(from_dict(obj), namespace=ns)  # type: ignore[call-overload]
    name = deployment["metadata"]["name"]
    wait_for(
        lambda: (
            (cluster.client.get(Deployment, name, namespace=ns).status or DeploymentStatus()).readyReplicas
            == 1
        ),
        120,
        f"Deployment {name} ready on the agent",
    )
    (pod,) = cluster.client.list(Pod, namespace=ns, labels=deployment["spec"]["selector"]["matchLabels"])
    assert pod.status is not None and pod.status.podIP
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.25] * 64}]}
    answer = httpx.post(f"http://{pod.status.podIP}:8080/v2/models/digits-cnn/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"]


def rank_pod(cluster: ClusterHandle, ns: str, job: str, attempt: int, rank: int) -> str | None:
    pods = list(
        cluster.client.list(
            Pod,
            namespace=ns,
            labels={
                naming.LABEL_TRAININGJOB: job,
                naming.LABEL_ATTEMPT: str(attempt),
                naming.LABEL_COMPLETION_INDEX: str(rank),
            },
        )
    )
    return pods[0].metadata.name if pods and pods[0].metadata else None


def test_killed_rank_restarts_the_gang_which_resumes_from_its_checkpoint(
    cluster: ClusterHandle, agent: AgentProcess, operator: OperatorProcess, op_namespace: str, tmp_path: Path
) -> None:
    cluster.client.create(
        TRAININGJOB_RESOURCE(cnn_job("heal", agent, tmp_path, epochs=250, checkpoint_every=25)),
        namespace=op_namespace,
    )
    ns = op_namespace
    # Wait until attempt 1 has trained a while and written checkpoints (status.lastCheckpoint is
    # not filled in by the operator yet, so the files on the hostPath tell), then SIGKILL rank
    # 1's training process (torchrun's child, not torchrun).
    ckpt_root = tmp_path / "ckpt"

    def checkpoints() -> list[int]:
        return sorted(
            int(p.parent.name.split("-")[1]) for p in ckpt_root.glob("trainingjobs/*/*/ckpt-*/COMPLETE")
        )

    st = wait_for(
        lambda: (
            (s := status_of(cluster, ns, "heal")).get("progress", {}).get("step", 0) >= 100
            and checkpoints()
            and s
        ),
        240,
        "attempt 1 past step 100 with a checkpoint",
    )
    assert st["phase"] == "Running" and st.get("attempt", 1) == 1
    pod = rank_pod(cluster, ns, "heal", 1, 1)
    assert pod is not None
    (torchrun,) = agent.container_pids(ns, pod)
    workers = [
        p for p in descendants(torchrun) if "coxswain_trainer" in cmdline(p) and "torchrun" not in cmdline(p)
    ]
    assert workers, [cmdline(p) for p in descendants(torchrun)]
    os.kill(workers[0], signal.SIGKILL)
    checkpoint_at_kill = checkpoints()[-1]

    final, _ = run_to_end(cluster, ns, "heal", 400)
    assert final["phase"] == "Succeeded", f"{final}\n{operator.log_tail()}\n{agent.log_tail()}"
    assert final["attempt"] == 2 and final["restarts"] == 1, final
    assert final["lastFailure"]["attempt"] == 1
    # Attempt 2 resumed from attempt 1's checkpoint instead of starting again.
    logs = sorted(agent.data_dir.glob(f"logs/{ns}_heal-2-0-*/trainer/*.log"))
    assert logs, "no log of attempt 2's rank 0"
    text = logs[-1].read_text(errors="replace")
    assert "resuming" in text, text[-2000:]
    resumed = [line for line in text.splitlines() if "event=resuming" in line]
    assert resumed and f"step={checkpoint_at_kill}" in resumed[0], (checkpoint_at_kill, resumed)
    metrics = operator.metrics()
    restarts = [
        line
        for line in metrics.splitlines()
        if line.startswith("coxswain_trainingjobs_restarts_total{") and not line.endswith(" 0.0")
    ]
    assert restarts, "\n".join(line for line in metrics.splitlines() if "restarts" in line)
