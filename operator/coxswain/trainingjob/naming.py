"""Names and labels of what a TrainingJob owns; one place so builders and lookups agree."""

from __future__ import annotations

LABEL_TRAININGJOB = "coxswain.dev/trainingjob"
LABEL_ATTEMPT = "coxswain.dev/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
# Set on every pod by the Job controller (Kubernetes >= 1.28): the node rank.
LABEL_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
ANNOTATION_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
MANAGER = "coxswain"
# Kueue admits a suspended Job carrying this label against its LocalQueue's ClusterQueue.
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"

CONFIG_MOUNT = "/etc/coxswain"
CONFIG_FILE = "job.yaml"
CHECKPOINT_MOUNT = "/var/lib/coxswain/checkpoints"
MODEL_REPOSITORY_MOUNT = "/models"
ENCRYPTION_KEY_MOUNT = "/etc/coxswain-key"
ENCRYPTION_KEY_FILE = "key"


def service_name(job: str) -> str:
    """The headless Service: pods resolve as `<job>-<attempt>-<rank>.<job>`."""
    return job


def config_map_name(job: str) -> str:
    return f"{job}-config"


def checkpoint_claim_name(job: str) -> str:
    """The PersistentVolumeClaim the operator makes for checkpoints when the spec names no volume."""
    return f"{job}-checkpoints"


def batch_job_name(job: str, attempt: int) -> str:
    """One batch/v1 Job per attempt; a deterministic name makes creation idempotent."""
    return f"{job}-{attempt}"


def trainingjob_of_batch_job(job: str) -> str | None:
    """The TrainingJob a batch Job name belongs to (the inverse of `batch_job_name`)."""
    name, _, attempt = job.rpartition("-")
    return name if name and attempt.isdigit() else None


def pod_hostname(job: str, attempt: int, rank: int | str) -> str:
    return f"{batch_job_name(job, attempt)}-{rank}"


def rank0_address(job: str, attempt: int) -> str:
    return f"{pod_hostname(job, attempt, 0)}.{service_name(job)}"
