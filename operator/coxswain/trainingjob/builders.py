"""Pure builders: a TrainingJob in, the Kubernetes objects it needs out (plain dicts).

Per job: a ConfigMap holding the job (the trainer's config), a headless Service (stable DNS
names, published before pods are ready so rank 0's name resolves while workers start), and
per attempt one Indexed batch/v1 Job, one pod per node, completion index = node rank.
The Job has `backoffLimit: 0` and a pod failure policy that fails it at the first failed
pod: whole-gang restarts are the operator's, not the Job controller's.
"""

from __future__ import annotations

from typing import Any

import yaml

from coxswain.api import API_VERSION, TRAININGJOB_KIND
from coxswain.api.trainingjob import Backend, CheckpointAccessMode, TrainingJob, TrainingJobSpec
from coxswain.podsecurity import container_security_context, pod_security_context
from coxswain.quantity import whole_cores
from coxswain.trainingjob import naming

GPU_RESOURCE = "nvidia.com/gpu"
# Time for the trainer to write a checkpoint after SIGTERM (suspend, restart, deletion).
TERMINATION_GRACE_SECONDS = 60


def owner_reference(tj: TrainingJob) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": TRAININGJOB_KIND,
        "name": tj.metadata.name,
        "uid": tj.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def common_labels(tj: TrainingJob) -> dict[str, str]:
    return {
        naming.LABEL_TRAININGJOB: _name(tj),
        naming.LABEL_MANAGED_BY: naming.MANAGER,
        naming.LABEL_COMPONENT: "trainer",
    }


def _name(tj: TrainingJob) -> str:
    assert tj.metadata.name, "a TrainingJob from the API server always has a name"
    return tj.metadata.name


def _metadata(tj: TrainingJob, name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": tj.metadata.namespace,
        "labels": {**common_labels(tj), **(extra_labels or {})},
        "ownerReferences": [owner_reference(tj)],
    }


def resolve_backend(spec: TrainingJobSpec) -> str:
    if spec.backend == Backend.AUTO:
        return "nccl" if spec.resources.gpus > 0 else "gloo"
    return spec.backend.value


_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def trainer_config(tj: TrainingJob) -> str:
    """The file the trainer reads: the TrainingJob itself, without status."""
    doc = {
        "apiVersion": API_VERSION,
        "kind": TRAININGJOB_KIND,
        "metadata": {"name": tj.metadata.name, "namespace": tj.metadata.namespace, "uid": tj.metadata.uid},
        "spec": tj.spec.to_dict(),
    }
    # libyaml's dumper where built in (same document, about 10x less CPU per new job).
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=True)


def build_config_map(tj: TrainingJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(tj, naming.config_map_name(_name(tj))),
        "data": {naming.CONFIG_FILE: trainer_config(tj)},
    }


def build_service(tj: TrainingJob) -> dict[str, Any]:
    name = _name(tj)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(tj, naming.service_name(name)),
        "spec": {
            "clusterIP": "None",
            # Rank 0's DNS name must resolve before it is ready, or workers crash at rendezvous
            # (a common Kubeflow complaint).
            "publishNotReadyAddresses": True,
            "selector": {naming.LABEL_TRAININGJOB: name},
            "ports": [
                {
                    "name": "rendezvous",
                    "port": tj.spec.ports.rendezvous,
                    "targetPort": tj.spec.ports.rendezvous,
                },
                {"name": "metrics", "port": tj.spec.ports.metrics, "targetPort": tj.spec.ports.metrics},
            ],
        },
    }


def cpu_threads(cpu: str, procs_per_node: int) -> int:
    """Threads per process for a pod CPU limit: whole cores split across its processes."""
    return max(1, whole_cores(cpu) // procs_per_node)


def checkpoint_dir(tj: TrainingJob) -> str:
    """Where the trainer keeps checkpoints. On a volume the user gives (a claim or a hostPath,
    possibly shared by many TrainingJobs), a directory per TrainingJob (by uid: a new job of the
    same name starts fresh), which the trainer makes itself as the pod's user: a subPath mount
    would have the kubelet make it, owned by root, and a non-root trainer could not write it
    (seen on a real node). The volume's root must be writable by that user."""
    volume = tj.spec.checkpoint.volume
    if volume is not None and (volume.persistent_volume_claim is not None or volume.host_path is not None):
        own_dir = f"trainingjobs/{tj.metadata.namespace}/{_name(tj)}-{(tj.metadata.uid or '')[:8]}"
        return f"{naming.CHECKPOINT_MOUNT}/{own_dir}"
    return naming.CHECKPOINT_MOUNT


def build_env(tj: TrainingJob, attempt: int) -> list[dict[str, Any]]:
    spec, name = tj.spec, _name(tj)
    job = naming.batch_job_name(name, attempt)
    world = spec.nodes * spec.procs_per_node
    rdzv = f"{naming.rank0_address(name, attempt)}:{spec.ports.rendezvous}"
    env: list[dict[str, Any]] = [
        # First, so later values can refer to it with $(COXSWAIN_NODE_RANK).
        {
            "name": "COXSWAIN_NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{naming.ANNOTATION_COMPLETION_INDEX}']"}
            },
        },
        {"name": "PET_NNODES", "value": str(spec.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(spec.procs_per_node)},
        {"name": "PET_NODE_RANK", "value": "$(COXSWAIN_NODE_RANK)"},
        {"name": "PET_RDZV_BACKEND", "value": "c10d"},
        {"name": "PET_RDZV_ENDPOINT", "value": rdzv},
        {"name": "PET_RDZV_ID", "value": f"{tj.metadata.uid}-{attempt}"},
        # torchrun ranks nodes by their address: naming each by its DNS name puts node 0 at rank 0,
        # where the operator reads /progress.
        {"name": "PET_LOCAL_ADDR", "value": f"{job}-$(COXSWAIN_NODE_RANK).{naming.service_name(name)}"},
        # Whole-gang restarts are the operator's; torchrun must not restart members in place.
        {"name": "PET_MAX_RESTARTS", "value": "0"},
        {"name": "MASTER_ADDR", "value": naming.rank0_address(name, attempt)},
        {"name": "MASTER_PORT", "value": str(spec.ports.rendezvous)},
        {"name": "WORLD_SIZE", "value": str(world)},
        {"name": "COXSWAIN_JOB_NAME", "value": name},
        {"name": "COXSWAIN_JOB_NAMESPACE", "value": tj.metadata.namespace or ""},
        {"name": "COXSWAIN_ATTEMPT", "value": str(attempt)},
        {"name": "COXSWAIN_CHECKPOINT_DIR", "value": checkpoint_dir(tj)},
        {"name": "COXSWAIN_MODEL_REPOSITORY", "value": naming.MODEL_REPOSITORY_MOUNT},
        {"name": "COXSWAIN_METRICS_PORT", "value": str(spec.ports.metrics)},
        {"name": "OMP_NUM_THREADS", "value": str(cpu_threads(spec.resources.cpu, spec.procs_per_node))},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.export is not None and spec.export.encryption is not None:
        env.append(
            {
                "name": "COXSWAIN_ENCRYPTION_KEY_FILE",
                "value": f"{naming.ENCRYPTION_KEY_MOUNT}/{naming.ENCRYPTION_KEY_FILE}",
            }
        )
    if resolve_backend(spec) == "nccl":
        env += [
            # Fail a collective on a dead peer instead of hanging: the operator restarts the gang.
            {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
            {"name": "NCCL_DEBUG", "value": "WARN"},
        ]
    env += [{"name": e.name, "value": e.value} for e in spec.env]
    return env


def _volumes(
    tj: TrainingJob, checkpoint_claim: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec, name = tj.spec, _name(tj)
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": naming.config_map_name(name)}},
        # Read-only root filesystem: torch and Python still need scratch space.
        {"name": "tmp", "emptyDir": {}},
        # NCCL and gloo use shared memory between local processes.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": naming.CONFIG_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    ckpt = spec.checkpoint.volume
    ckpt_mount: dict[str, Any] = {"name": "checkpoints", "mountPath": naming.CHECKPOINT_MOUNT}
    # A volume shared by TrainingJobs is mounted whole: checkpoint_dir() names this job's directory.
    if ckpt is None and checkpoint_claim is not None:
        # The operator's own claim belongs to this TrainingJob alone: no subdirectory needed.
        volumes.append({"name": "checkpoints", "persistentVolumeClaim": {"claimName": checkpoint_claim}})
    elif ckpt is not None and ckpt.persistent_volume_claim is not None:
        volumes.append(
            {
                "name": "checkpoints",
                "persistentVolumeClaim": {"claimName": ckpt.persistent_volume_claim.claim_name},
            }
        )
    elif ckpt is not None and ckpt.host_path is not None:
        volumes.append(
            {"name": "checkpoints", "hostPath": {"path": ckpt.host_path.path, "type": "DirectoryOrCreate"}}
        )
    else:
        # An explicit emptyDir, or no claim could be made (CheckpointsDurable says so).
        empty = ckpt.empty_dir if ckpt is not None else None
        source: dict[str, Any] = {}
        if empty is not None and empty.medium:
            source["medium"] = empty.medium
        if empty is not None and empty.size_limit:
            source["sizeLimit"] = empty.size_limit
        volumes.append({"name": "checkpoints", "emptyDir": source})
    mounts.append(ckpt_mount)
    if spec.export is not None:
        repo = spec.export.repository
        if repo.persistent_volume_claim is not None:
            volumes.append(
                {
                    "name": "models",
                    "persistentVolumeClaim": {"claimName": repo.persistent_volume_claim.claim_name},
                }
            )
        elif repo.host_path is not None:
            volumes.append(
                {"name": "models", "hostPath": {"path": repo.host_path.path, "type": "DirectoryOrCreate"}}
            )
        mounts.append({"name": "models", "mountPath": naming.MODEL_REPOSITORY_MOUNT})
        if spec.export.encryption is not None:
            ref = spec.export.encryption.key_secret_ref
            volumes.append(
                {
                    "name": "encryption-key",
                    "secret": {
                        "secretName": ref.name,
                        "items": [{"key": ref.key, "path": naming.ENCRYPTION_KEY_FILE}],
                        "defaultMode": 0o400,
                    },
                }
            )
            mounts.append(
                {"name": "encryption-key", "mountPath": naming.ENCRYPTION_KEY_MOUNT, "readOnly": True}
            )
    return volumes, mounts


def build_resources(spec: TrainingJobSpec) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    if spec.resources.gpus > 0:
        amounts[GPU_RESOURCE] = str(spec.resources.gpus)
    # requests == limits: a gang is only as fast as its slowest member (Guaranteed QoS).
    return {"requests": dict(amounts), "limits": dict(amounts)}


def build_pod_template(tj: TrainingJob, attempt: int, checkpoint_claim: str | None = None) -> dict[str, Any]:
    spec, name = tj.spec, _name(tj)
    volumes, mounts = _volumes(tj, checkpoint_claim)
    tolerations = [t.to_dict() for t in spec.tolerations]
    if spec.resources.gpus > 0 and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        # GPU node pools are commonly tainted nvidia.com/gpu:NoSchedule.
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    pod_spec: dict[str, Any] = {
        "subdomain": naming.service_name(name),
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": pod_security_context(),
        "containers": [
            {
                "name": "trainer",
                "image": spec.image,
                "command": ["torchrun"],
                "args": ["-m", "coxswain_trainer", "--config", f"{naming.CONFIG_MOUNT}/{naming.CONFIG_FILE}"],
                "env": build_env(tj, attempt),
                "ports": [
                    {"name": "rendezvous", "containerPort": spec.ports.rendezvous},
                    {"name": "metrics", "containerPort": spec.ports.metrics},
                ],
                "resources": build_resources(spec),
                "volumeMounts": mounts,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": container_security_context(),
            }
        ],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.priority_class_name:
        # The scheduler's priority, and the one Kueue gives the workload (preemption order).
        pod_spec["priorityClassName"] = spec.priority_class_name
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return {
        "metadata": {
            "labels": {**common_labels(tj), naming.LABEL_ATTEMPT: str(attempt)},
            "annotations": {"kubectl.kubernetes.io/default-container": "trainer"},
        },
        "spec": pod_spec,
    }


def build_job(tj: TrainingJob, attempt: int, checkpoint_claim: str | None = None) -> dict[str, Any]:
    """The attempt's Indexed Job; `checkpoint_claim`: the operator-made claim to mount (see checkpoints)."""
    spec, name = tj.spec, _name(tj)
    labels = {naming.LABEL_ATTEMPT: str(attempt)}
    if spec.queue_name:
        labels[naming.LABEL_KUEUE_QUEUE] = spec.queue_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(tj, naming.batch_job_name(name, attempt), labels),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.nodes,
            "parallelism": spec.nodes,
            "backoffLimit": 0,
            # The first failed member fails the Job, so the operator sees it at once and restarts
            # the whole gang; DisruptionTarget keeps evictions and preemptions distinguishable.
            "podFailurePolicy": {
                "rules": [
                    {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0]}},
                ]
            },
            "podReplacementPolicy": "Failed",
            # Queued: created suspended, Kueue un-suspends the whole gang once it fits the quota.
            "suspend": spec.suspend or spec.queue_name is not None,
            "template": build_pod_template(tj, attempt, checkpoint_claim),
        },
    }


def build_checkpoint_claim(tj: TrainingJob) -> dict[str, Any]:
    """The TrainingJob's own checkpoint claim: owned by it, so it outlives attempts and goes with it.

    ReadWriteOnce by default: only node rank 0 reads and writes checkpoints (it loads on resume
    and broadcasts to the other ranks). ReadWriteMany when the spec asks: a multi-node gang mounts
    it in every pod. No storageClassName: the cluster's default class.
    """
    ckpt = tj.spec.checkpoint
    spec: dict[str, Any] = {
        "accessModes": [str(ckpt.access_mode or CheckpointAccessMode.READ_WRITE_ONCE)],
        "resources": {"requests": {"storage": ckpt.size}},
    }
    if ckpt.storage_class_name is not None:
        spec["storageClassName"] = ckpt.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(tj, naming.checkpoint_claim_name(_name(tj))),
        "spec": spec,
    }
