"""Pure builders: a TrainingJob in, Service/Job/ConfigMap dicts out."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from coxswain.api.trainingjob import TrainingJob, TrainingJobStatus
from coxswain.trainingjob import builders

pytestmark = pytest.mark.unit


def make(**spec: Any) -> TrainingJob:
    base: dict[str, Any] = {"task": {"builtin": {"model": "cnn", "dataset": "digits"}}, "nodes": 3}
    base.update(spec)
    return TrainingJob.model_validate(
        {"metadata": {"name": "cnn", "namespace": "ml", "uid": "1234567890ab", "generation": 1}, "spec": base}
    )


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_indexed_job_one_pod_per_node_fails_fast() -> None:
    job = builders.build_job(make(), attempt=2)
    spec = job["spec"]
    assert job["metadata"]["name"] == "cnn-2"
    assert job["metadata"]["labels"]["coxswain.dev/attempt"] == "2"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0
    assert spec["podReplacementPolicy"] == "Failed"
    assert {r["action"] for r in spec["podFailurePolicy"]["rules"]} == {"FailJob"}
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "name": "cnn",
        "uid": "1234567890ab",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_torchrun_env_names_rank0_by_dns_and_rank_from_completion_index() -> None:
    job = builders.build_job(make(procsPerNode=2, resources={"cpu": "4", "memory": "1Gi"}), attempt=1)
    env = env_of(job)
    assert env["COXSWAIN_NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert next(iter(env)) == "COXSWAIN_NODE_RANK", "must come first so $(COXSWAIN_NODE_RANK) expands"
    assert env["PET_NNODES"] == "3"
    assert env["PET_NPROC_PER_NODE"] == "2"
    assert env["PET_NODE_RANK"] == "$(COXSWAIN_NODE_RANK)"
    assert env["PET_RDZV_ENDPOINT"] == "cnn-1-0.cnn:29400"
    assert env["PET_LOCAL_ADDR"] == "cnn-1-$(COXSWAIN_NODE_RANK).cnn"
    assert env["PET_MAX_RESTARTS"] == "0"
    assert env["MASTER_ADDR"] == "cnn-1-0.cnn"
    assert env["WORLD_SIZE"] == "6"
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["PET_RDZV_ID"] == "1234567890ab-1"
    assert "NCCL_DEBUG" not in env


def test_gpus_request_nvidia_gpu_and_nccl_settings() -> None:
    job = builders.build_job(make(resources={"gpus": 4, "cpu": "8", "memory": "32Gi"}), attempt=1)
    pod = job["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "4"}
    assert pod["containers"][0]["resources"]["requests"] == limits
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    env = env_of(job)
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert builders.resolve_backend(make(resources={"gpus": 1}).spec) == "nccl"
    assert builders.resolve_backend(make().spec) == "gloo"


def test_pod_security_and_no_api_credentials() -> None:
    pod = builders.build_job(make(), attempt=1)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]["securityContext"]
    assert container == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == "cnn"


def test_volumes_for_pvc_checkpoints_export_and_encryption_key() -> None:
    tj = make(
        checkpoint={"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}},
        export={
            "repository": {"persistentVolumeClaim": {"claimName": "models"}},
            "encryption": {"keySecretRef": {"name": "k", "key": "key"}},
        },
    )
    pod = builders.build_job(tj, attempt=1)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "ckpt"}
    # The whole volume, and this job's own directory on it, which the trainer makes as its user.
    assert mounts["checkpoints"] == {"name": "checkpoints", "mountPath": "/var/lib/coxswain/checkpoints"}
    ckpt_dir = env_of(builders.build_job(tj, 1))["COXSWAIN_CHECKPOINT_DIR"]
    assert ckpt_dir == "/var/lib/coxswain/checkpoints/trainingjobs/ml/cnn-12345678"
    assert mounts["models"]["mountPath"] == "/models"
    assert volumes["encryption-key"]["secret"]["items"] == [{"key": "key", "path": "key"}]
    assert env_of(builders.build_job(tj, 1))["COXSWAIN_ENCRYPTION_KEY_FILE"] == "/etc/coxswain-key/key"
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/coxswain", "readOnly": True}


def test_headless_service_publishes_not_ready_addresses() -> None:
    svc = builders.build_service(make())
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"coxswain.dev/trainingjob": "cnn"}


def test_config_map_holds_the_job_the_trainer_parses() -> None:
    cm = builders.build_config_map(make(seed=7))
    doc = yaml.safe_load(cm["data"]["job.yaml"])
    parsed = TrainingJob.model_validate(doc)
    assert parsed.spec.seed == 7
    assert parsed.metadata.name == "cnn"


def test_user_env_is_appended_after_the_operators() -> None:
    env = env_of(builders.build_job(make(env=[{"name": "MY_FLAG", "value": "1"}]), 1))
    assert list(env)[-1] == "MY_FLAG"


@pytest.mark.parametrize(
    ("cpu", "procs", "threads"), [("500m", 1, 1), ("4", 2, 2), ("2.5", 1, 2), ("16", 3, 5)]
)
def test_cpu_threads(cpu: str, procs: int, threads: int) -> None:
    assert builders.cpu_threads(cpu, procs) == threads


def test_handoff_rolls_a_new_version_in_as_canary_and_promoted_canary_becomes_stable() -> None:
    from coxswain.trainingjob.handoff import handoff_patch

    tj = make(serving={"modelService": "digits", "rollout": "canary", "canaryPercent": 20})
    exported = TrainingJobStatus.model_validate(
        {"exportedModel": {"uri": "/models/cnn/v3", "modelName": "cnn", "version": "v3"}}
    )
    tj = tj.model_copy(update={"status": exported})
    assert handoff_patch(tj, {"stable": "v1"}) == {
        "spec": {"versions": {"canary": "v3", "canaryPercent": 20}}
    }
    promoted = handoff_patch(tj, {"stable": "v1", "canary": "v2"}, {"phase": "Promoted", "version": "v2"})
    assert promoted == {"spec": {"versions": {"canary": "v3", "canaryPercent": 20, "stable": "v2"}}}
    assert handoff_patch(tj, {"stable": "v1", "canary": "v3"}) is None
    stable = make(serving={"modelService": "digits", "rollout": "stable"})
    stable = stable.model_copy(update={"status": tj.status})
    assert handoff_patch(stable, {"stable": "v1", "canary": "v2"}) == {
        "spec": {"versions": {"stable": "v3", "canary": None, "canaryPercent": None}}
    }


def test_queued_job_is_created_suspended_with_kueues_queue_label_and_priority() -> None:
    job = builders.build_job(make(queueName="team-a", priorityClassName="training-low"), attempt=1)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True  # Kueue un-suspends the whole gang at admission
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "training-low"


def test_without_a_queue_the_job_carries_no_kueue_label() -> None:
    job = builders.build_job(make(), attempt=1)
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    assert job["spec"]["suspend"] is False
    assert "priorityClassName" not in job["spec"]["template"]["spec"]
