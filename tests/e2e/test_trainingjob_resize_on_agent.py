"""A gang resized while suspended, on real trainer processes: a TrainingJob trains on 2 nodes,
is suspended (rank 0 checkpoints on SIGTERM), changed to 1 node and resumed. The operator
makes attempt 2 for the 1-node gang, not charged to the restart budget; it resumes from the
checkpoint on world size 1 and the job succeeds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

from agent_fixtures import AgentProcess
from cluster_fixtures import ClusterHandle, wait_for
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.trainingjob import naming
from operator_fixtures import OperatorProcess

pytestmark = pytest.mark.e2e


EPOCHS = 150
TOTAL_STEPS = EPOCHS * 12


def mlp_job(name: str, agent: AgentProcess, root: Path) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "task": {"builtin": {"model": "mlp", "dataset": "digits", "hiddenSizes": [64]}},
            "nodes": 2,
            "procsPerNode": 1,
            "nodeSelector": agent.selector,
            "resources": {"cpu": "1", "memory": "1Gi"},
            # 12 steps an epoch on 2 ranks and on 1 (batch 128 of 1437 samples).
            "optimization": {"batchSize": 128, "epochs": EPOCHS},
            # A hostPath: rank 0 of either gang reaches it, and the test reads it.
            "checkpoint": {"intervalSteps": 20, "keep": 3, "volume": {"hostPath": {"path": str(root)}}},
            "failurePolicy": {"maxRestarts": 0, "backoffSeconds": 1, "maxBackoffSeconds": 2},
        },
    }


def status_of(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.client.get(TRAININGJOB_RESOURCE, name, namespace=ns).get("status") or {})


def patch_spec(cluster: ClusterHandle, ns: str, name: str, spec: dict[str, Any]) -> None:
    cluster.client.patch(TRAININGJOB_RESOURCE, name, {"spec": spec}, namespace=ns, patch_type=PatchType.MERGE)


def pods_of(cluster: ClusterHandle, ns: str, name: str) -> list[Pod]:
    return list(cluster.client.list(Pod, namespace=ns, labels={naming.LABEL_TRAININGJOB: name}))


def complete_checkpoints(root: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in root.glob("trainingjobs/*/*/ckpt-*/COMPLETE"))


def test_suspended_gang_shrunk_to_one_node_resumes_from_its_checkpoint(
    cluster: ClusterHandle, agent: AgentProcess, operator: OperatorProcess, op_namespace: str, tmp_path: Path
) -> None:
    ns, name, root = op_namespace, "shrink", tmp_path / "ckpt"
    cluster.client.create(TRAININGJOB_RESOURCE(mlp_job(name, agent, root)), namespace=ns)
    wait_for(
        lambda: (
            status_of(cluster, ns, name).get("phase") == "Running" and len(complete_checkpoints(root)) >= 1
        ),
        240,
        "attempt 1 running on 2 nodes with a checkpoint written",
    )
    patch_spec(cluster, ns, name, {"suspend": True})
    wait_for(
        lambda: status_of(cluster, ns, name).get("phase") == "Suspended" and not pods_of(cluster, ns, name),
        120,
        "suspended, with every pod gone (rank 0 checkpoints on SIGTERM first)",
    )
    newest = complete_checkpoints(root)[-1]
    assert newest < TOTAL_STEPS, "the job must be suspended before it finished; give it more epochs"

    # While suspended only: the CRD refuses the change on a running job (tests/unit).
    patch_spec(cluster, ns, name, {"nodes": 1})
    resized = wait_for(
        lambda: (s := status_of(cluster, ns, name)).get("attempt") == 2 and s,
        60,
        "the resize to make attempt 2",
    )
    assert resized["phase"] == "Suspended", resized
    patch_spec(cluster, ns, name, {"suspend": False})

    deadline = time.monotonic() + 400
    final: dict[str, Any] = {}
    while time.monotonic() < deadline:
        final = status_of(cluster, ns, name)
        if final.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.5)
    assert final.get("phase") == "Succeeded", f"{final}\n{operator.log_tail()}\n{agent.log_tail()}"
    assert final["attempt"] == 2
    assert final.get("restarts", 0) == 0 and final.get("uncountedRestarts", 0) == 0, final
    attempts = [(a["attempt"], a["nodes"], a["procsPerNode"], a["worldSize"]) for a in final["attempts"]]
    assert attempts == [(1, 2, 1, 2), (2, 1, 1, 1)], final["attempts"]
    # Attempt 2 started at the checkpoint step, on one process.
    assert final["attempts"][1].get("resumedFromStep") == newest, (newest, final["attempts"])
    logs = sorted(agent.data_dir.glob(f"logs/{ns}_{name}-2-0-*/trainer/*.log"))
    assert logs, "no log of attempt 2's rank 0"
    text = logs[-1].read_text(errors="replace")
    (resuming,) = [line for line in text.splitlines() if "event=resuming" in line]
    assert f"step={newest}" in resuming and "world_size=1" in resuming, resuming
    assert "written_by=2" in resuming.replace("'", "").replace('"', ""), resuming
    assert final["progress"]["step"] == TOTAL_STEPS
