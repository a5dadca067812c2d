"""The installed chart trains for real: its operator command, with its ServiceAccount's
rules, runs a TrainingJob whose pods the node agent runs as real processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chart_harness import Release, Replica, delete_custom_objects, install, uninstall
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from agent_fixtures import AgentProcess
from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.kwok_nodes import KWOK_NODE_SELECTOR
from coxswain.kube import TRAININGJOB_RESOURCE
from operator_fixtures import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def release(cluster: ClusterHandle, tmp_path: Path) -> Iterator[tuple[Release, str]]:
    watched = f"t-{uuid.uuid4().hex[:10]}"
    cluster.client.create(Namespace(metadata=ObjectMeta(name=watched)))
    name = f"cx-agent-{uuid.uuid4().hex[:6]}"
    values: dict[str, Any] = {
        "watchNamespaces": [watched],
        "metrics": {"port": free_port()},
        "healthPort": free_port(),
        # The Deployment's pods stay on kwok (they only pretend); the Replica below works.
        "nodeSelector": KWOK_NODE_SELECTOR,
        # The job below keeps its checkpoints and model under tmp_path: a development cluster.
        "tenancy": {"hostPath": {"allowed": True, "prefixes": [str(tmp_path)]}},
    }
    rel = install(cluster, tmp_path, name, values)
    yield rel, watched
    uninstall(cluster, rel)
    cluster.kubectl("delete", "namespace", watched, "--wait=false", "--ignore-not-found", check=False)


def test_installed_operator_trains_a_model_on_the_node_agent(
    cluster: ClusterHandle, agent: AgentProcess, release: tuple[Release, str], tmp_path: Path
) -> None:
    rel, ns = release
    replica = Replica(cluster, rel, f"{rel.fullname}-0", tmp_path / "operator.log", own_ports=False)
    try:
        wait_for(lambda: replica.healthy() or None, 90, "the operator's /healthz")
        job = {
            "apiVersion": "coxswain.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "mlp"},
            "spec": {
                "task": {"builtin": {"model": "mlp", "dataset": "digits", "hiddenSizes": [32]}},
                "nodes": 1,
                "nodeSelector": agent.selector,
                "resources": {"cpu": "1", "memory": "1Gi"},
                "optimization": {"batchSize": 64, "epochs": 1500},
                "checkpoint": {
                    "intervalSteps": 200,
                    "volume": {"hostPath": {"path": str(tmp_path / "ckpt")}},
                },
                "export": {
                    "repository": {"hostPath": {"path": str(tmp_path / "models")}},
                    "modelName": "mlp",
                },
            },
        }
        cluster.client.create(TRAININGJOB_RESOURCE(job), namespace=ns)
        steps: list[int] = []
        deadline = time.monotonic() + 300
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = dict(cluster.client.get(TRAININGJOB_RESOURCE, "mlp", namespace=ns).get("status") or {})
            step = (status.get("progress") or {}).get("step")
            if status.get("phase") == "Running" and step:
                steps.append(step)
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(0.5)
        log = replica.log.read_text(errors="replace")[-3000:]
        assert status.get("phase") == "Succeeded", f"{status}\n{log}\n{agent.log_tail()}"
        # Pulled every 5 s: a fast machine may finish between two pulls of a Running job, but
        # the final status only carries progress if at least one pull reached rank 0.
        final_step = (status.get("progress") or {}).get("step")
        assert steps or final_step, "progress was pulled from rank 0 while the job ran"
        assert status["exportedModel"]["version"] == "v1"
        assert 'forbidden: User "system:serviceaccount' not in replica.log.read_text(errors="replace")
        delete_custom_objects(cluster, ns)
    finally:
        replica.stop()
