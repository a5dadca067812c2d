"""What the watches and rank 0 show about one TrainingJob, read into plain facts.

The observation half of the planner (planner.py decides): which attempt an object belongs
to, a Job's conditions, the pods' ranks, why a gang is not running yet, the model rank 0
exported and the progress it reports. Pure functions of the observed objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coxswain.api.trainingjob import ExportedModel, LastCheckpoint, Progress
from coxswain.tenancy import Refusal
from coxswain.trainingjob import naming
from coxswain.trainingjob.checkpoints import CheckpointStorage


@dataclass(frozen=True)
class Observed:
    """What the watches show for one TrainingJob: its batch Jobs and pods (all attempts)."""

    jobs: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    progress: dict[str, Any] | None = None  # rank 0's /progress, when it answered
    workloads: list[dict[str, Any]] = field(default_factory=list)  # Kueue's, slimmed (queueing.py)
    # What the tenancy policy (and the namespace's Pod Security level) refuses in the spec.
    refusals: tuple[Refusal, ...] = ()
    # Where checkpoints live (None: not decided, e.g. in tests of other concerns).
    checkpoint: CheckpointStorage | None = None


def attempt_of(obj: dict[str, Any]) -> int | None:
    value = obj.get("metadata", {}).get("labels", {}).get(naming.LABEL_ATTEMPT)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def job_shape(job: dict[str, Any]) -> tuple[int, int] | None:
    """(nodes, procsPerNode) a batch Job was made for, from its completions and torchrun's
    environment (None: not one of ours as builders.py makes them)."""
    spec = job.get("spec", {})
    nodes = spec.get("completions")
    for container in spec.get("template", {}).get("spec", {}).get("containers", []) or []:
        for env in container.get("env", []) or []:
            if env.get("name") == "PET_NPROC_PER_NODE" and isinstance(nodes, int):
                try:
                    return nodes, int(env.get("value", ""))
                except ValueError:
                    return None
    return None


def job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in job.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def rank(pod: dict[str, Any]) -> int:
    labels = pod.get("metadata", {}).get("labels", {})
    annotations = pod.get("metadata", {}).get("annotations", {})
    value = labels.get(
        naming.LABEL_COMPLETION_INDEX, annotations.get(naming.ANNOTATION_COMPLETION_INDEX, "-1")
    )
    try:
        return int(value)
    except ValueError:
        return -1


def rank0_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((p for p in pods if rank(p) == 0), None)


def pending_reason(pods: list[dict[str, Any]], expected: int) -> str | None:
    """What holds the gang back, in the scheduler's and kubelet's words; None while its pods are
    only on their way (created, scheduled, pulling, starting). Counts of pods on their way are
    left out on purpose: each would be a status write (and a watch event, and a pass) per pod
    step, most of the operator's work in a burst of new jobs; `kubectl get pods` shows them."""
    running = sum(1 for p in pods if p.get("status", {}).get("phase") == "Running")
    for pod in sorted(pods, key=rank):
        status = pod.get("status", {})
        if status.get("phase") != "Pending":
            continue
        for cond in status.get("conditions", []) or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                msg = (cond.get("message") or cond.get("reason") or "").strip()
                return f"{running}/{expected} pods running; pod {pod['metadata']['name']} cannot be scheduled: {msg}"
        for cs in status.get("containerStatuses", []) or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                detail = f"{waiting.get('reason')} {waiting.get('message', '')}".strip()
                return (
                    f"{running}/{expected} pods running; pod {pod['metadata']['name']} is waiting: {detail}"
                )
    return None


def termination_record(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Rank 0 writes a JSON line to its termination log on success (the trainer contract)."""
    pod = rank0_pod(pods)
    if pod is None:
        return None
    for cs in pod.get("status", {}).get("containerStatuses", []) or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        message = (term.get("message") or "").strip()
        for line in reversed(message.splitlines()):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
    return None


def exported_model(pods: list[dict[str, Any]]) -> ExportedModel | None:
    exported = (termination_record(pods) or {}).get("exportedModel")
    if isinstance(exported, dict):
        try:
            return ExportedModel.model_validate(exported)
        except ValueError:
            return None
    return None


def final_progress(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Rank 0's last progress (step, loss, eval metric), from its termination log."""
    progress = (termination_record(pods) or {}).get("progress")
    return progress if isinstance(progress, dict) else None


def merge_progress(old: Progress | None, fresh: dict[str, Any] | None, now: datetime) -> Progress | None:
    if fresh is None:
        return old
    keys = set(Progress.model_fields)
    by_alias = {f.alias or name: name for name, f in Progress.model_fields.items()}
    data = {by_alias.get(k, k): v for k, v in fresh.items() if by_alias.get(k, k) in keys}
    try:
        new = Progress.model_validate(data)
    except ValueError:
        return old
    stepped = old is None or old.step != new.step or old.last_update_time is None
    return new.model_copy(
        update={"last_update_time": now if stepped else old.last_update_time if old else now}
    )


def last_checkpoint(old: LastCheckpoint | None, fresh: dict[str, Any] | None) -> LastCheckpoint | None:
    """Rank 0's newest checkpoint as /progress reports it (kept across attempts)."""
    record = (fresh or {}).get("lastCheckpoint")
    if not isinstance(record, dict):
        return old
    try:
        return LastCheckpoint.model_validate(record)
    except ValueError:
        return old


def resumed_from_step(fresh: dict[str, Any] | None) -> int | None:
    """The step rank 0 says this attempt resumed from (None: not said, or it started afresh)."""
    value = (fresh or {}).get("resumedFromStep")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
