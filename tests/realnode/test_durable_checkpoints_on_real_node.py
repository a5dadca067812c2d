"""Durable checkpoints by default (issue 16) on the real node: a TrainingJob with no checkpoint
settings gets its own PersistentVolumeClaim from the local-path StorageClass; SIGKILL of rank 1
after the first checkpoint restarts the whole gang, and the new attempt starts at the step of
the newest checkpoint the first attempt wrote, not at 0; the claim goes with the TrainingJob
(the garbage collector, through its owner reference).

Prints the time from the rank's death to the resumed attempt's first step, and rank 0's
checkpoint write time for the digits CNN. Needs the trainer image (`make images`)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.resources.core_v1 import PersistentVolume, PersistentVolumeClaim, Pod
from realnode_training import (  # noqa: F401 (fixtures)
    PodLog,
    durable_trainer_image,
    sigkill_rank,
    wall,
)

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.realnode import REAL_NODE_LABEL
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.trainingjob import naming
from operator_fixtures import OperatorProcess

pytestmark = pytest.mark.realnode

NAME = "durable"
INTERVAL = 40


def default_job(image: str) -> dict[str, Any]:
    """No `checkpoint.volume`, no StorageClass: everything about checkpoints left to the operator."""
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": NAME},
        "spec": {
            "image": image,
            "task": {
                "builtin": {"model": "cnn", "dataset": "digits", "channels": [8, 16], "hiddenSizes": [32]}
            },
            # One pod, two ranks: the gang the operator gives a ReadWriteOnce claim by default.
            "nodes": 1,
            "procsPerNode": 2,
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "resources": {"cpu": "1800m", "memory": "2Gi"},
            "optimization": {"batchSize": 128, "epochs": 30},
            "checkpoint": {"intervalSteps": INTERVAL, "keep": 2},
            "failurePolicy": {"maxRestarts": 1, "backoffSeconds": 1, "maxBackoffSeconds": 2},
        },
    }


def attempt_pod(cluster: ClusterHandle, ns: str, attempt: int) -> str | None:
    pods = cluster.client.list(
        Pod, namespace=ns, labels={naming.LABEL_TRAININGJOB: NAME, naming.LABEL_ATTEMPT: str(attempt)}
    )
    for pod in pods:
        meta, st = pod.metadata, pod.status
        if meta and st and st.phase == "Running" and not meta.deletionTimestamp:
            return str(meta.name)
    return None


def test_default_trainingjob_resumes_from_its_claim_after_sigkill_of_rank_1(
    real_cluster: ClusterHandle,
    durable_trainer_image: str,  # noqa: F811
    real_host_operator: OperatorProcess,
    real_op_namespace: str,
) -> None:
    client, ns = real_cluster.client, real_op_namespace
    client.create(TRAININGJOB_RESOURCE(default_job(durable_trainer_image)), namespace=ns)  # type: ignore[call-overload]

    def tj() -> dict[str, Any]:
        return dict(client.get(TRAININGJOB_RESOURCE, NAME, namespace=ns))

    def condition(kind: str) -> dict[str, Any] | None:
        conds = (tj().get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == kind), None)

    durable = wait_for(lambda: condition("CheckpointsDurable"), 120, "the CheckpointsDurable condition")
    assert durable["status"] == "True" and durable["reason"] == "ClaimPerJob", durable
    claim_name = naming.checkpoint_claim_name(NAME)

    first_attempt = int(wait_for(lambda: (tj().get("status") or {}).get("attempt"), 120, "attempt 1"))
    pod1 = wait_for(lambda: attempt_pod(real_cluster, ns, first_attempt), 300, "attempt 1's pod Running")
    log1 = PodLog.follow(real_cluster, ns, pod1)
    try:
        wait_for(lambda: log1.events("checkpoint_saved", rank=0), 600, "attempt 1's first checkpoint")
        claim = client.get(PersistentVolumeClaim, claim_name, namespace=ns)
        assert claim.status is not None and claim.status.phase == "Bound"
        assert claim.spec is not None and claim.spec.storageClassName == "local-path"
        volume = claim.spec.volumeName
        assert volume

        killed = sigkill_rank(ns, NAME, first_attempt, rank=1)
        died = time.time()
        assert killed, "no process of rank 1 found on the host"
    finally:
        log1.close(120)
    saved = log1.events("checkpoint_saved", rank=0)
    # The newest checkpoint of attempt 1: an interval one, or the one rank 0 writes on SIGTERM
    # when torchrun stops it after rank 1's death.
    newest = max(int(r["step"]) for r in saved)
    assert newest >= INTERVAL
    for r in saved:
        print(f"\ndigits CNN checkpoint (rank 0, local-path) step {r['step']}: {float(r['seconds']):.3f} s")

    second = wait_for(
        lambda: attempt_pod(real_cluster, ns, first_attempt + 1), 300, "the restarted attempt's pod Running"
    )
    log2 = PodLog.follow(real_cluster, ns, second)
    try:
        started = wait_for(lambda: log2.events("training_started", rank=0), 600, "attempt 2's first step")[0]
        print(f"rank 1 SIGKILL -> resumed attempt's first step: {wall(started) - died:.1f} s")
        # Where that time goes, by the API server's clock (whole seconds) and the trainer's.
        pod = client.get(Pod, second, namespace=ns)
        created = pod.metadata.creationTimestamp if pod.metadata else None
        statuses = (pod.status.containerStatuses or []) if pod.status else []
        running = statuses[0].state.running if statuses and statuses[0].state else None
        first_log = min((wall(r) for r in log2.records), default=None)
        if created is not None and running is not None and running.startedAt is not None:
            print(
                f"  -> new pod created +{created.timestamp() - died:.0f} s, container started "
                f"+{running.startedAt.timestamp() - died:.0f} s, first trainer line "
                f"+{(first_log or died) - died:.1f} s, training_started +{wall(started) - died:.1f} s"
            )
        assert int(started["step"]) == newest, (started, saved)
        final = wait_for(
            lambda: (s := tj().get("status") or {}).get("phase") in ("Succeeded", "Failed") and s,
            900,
            "the TrainingJob to finish",
        )
    finally:
        log2.close(60)
    assert final["phase"] == "Succeeded", f"{final}\n{real_host_operator.log_tail()}"
    assert (final.get("restarts") or 0) + (final.get("uncountedRestarts") or 0) == 1, final
    assert final["resumedFromStep"] == newest, final

    client.delete(TRAININGJOB_RESOURCE, NAME, namespace=ns)

    def claim_gone() -> bool:
        try:
            client.get(PersistentVolumeClaim, claim_name, namespace=ns)
        except ApiError as e:
            return e.status.code == 404
        return False

    wait_for(claim_gone, 120, f"PersistentVolumeClaim {claim_name} deleted with the TrainingJob")

    def volume_gone() -> bool:
        try:
            client.get(PersistentVolume, volume)
        except ApiError as e:
            return e.status.code == 404
        return False

    # local-path's reclaim policy is Delete: the data goes too.
    wait_for(volume_gone, 120, f"PersistentVolume {volume} deleted")
