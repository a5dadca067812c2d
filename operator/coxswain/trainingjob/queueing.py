"""TrainingJobs with `spec.queueName`: Kueue decides when the gang runs.

The attempt's Job is created suspended with Kueue's queue label (builders); Kueue makes a
Workload for it and un-suspends the Job when the whole gang fits the quota (admission), or
suspends it again to make room for a higher priority (preemption). So while a job is queued
the Job's `suspend` is Kueue's, never the planner's. What the user sees comes from here:

- phase `Queued`, condition `Queued` True with reason WaitingForAdmission (names the
  LocalQueue), Inadmissible (Kueue's own message: quota, a missing flavor...) or Preempted
  (Kueue's eviction message, naming the preempting workload);
- on admission `Queued` False / Admitted (names the ClusterQueue), then the usual Pending ->
  Running;
- a preemption is told from a first admission by that condition: an admitted job (Queued
  False/Admitted) whose Job is suspended again was evicted. It is counted in
  `status.preemptions`, never in the restart budget: the same Job resumes, and its new pods
  load the checkpoint the old ones wrote on SIGTERM.

Kueue's words live on the Workload (owned by the Job): the controller indexes Workloads by
their Job and passes the current attempt's here. Pure functions of the observation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WORKLOAD_KIND_GROUP = "kueue.x-k8s.io"


@dataclass(frozen=True)
class KueueView:
    """What Kueue says about one Job's Workload."""

    evicted: str | None = None  # Kueue's eviction message while Evicted is True
    pending: str | None = None  # why quota is not reserved (QuotaReserved False)
    cluster_queue: str | None = None  # where it was admitted


def _condition(workload: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def slim_workload(body: dict[str, Any]) -> dict[str, Any]:
    """Only what `view` reads: the owning Job's name, the conditions and the ClusterQueue."""
    meta = body.get("metadata", {}) or {}
    status = body.get("status", {}) or {}
    admission = status.get("admission") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "jobs": [o.get("name") for o in meta.get("ownerReferences", []) or [] if o.get("kind") == "Job"],
        },
        "status": {
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message")}
                for c in status.get("conditions", []) or []
            ],
            "admission": {"clusterQueue": admission.get("clusterQueue")} if admission else None,
        },
    }


def workload_of(job_name: str, workloads: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The (slimmed) Workload Kueue made for Job `job_name`, if any."""
    return next((w for w in workloads if job_name in w.get("metadata", {}).get("jobs", [])), None)


def view(workload: dict[str, Any] | None) -> KueueView:
    if workload is None:
        return KueueView()
    evicted = _condition(workload, "Evicted")
    reserved = _condition(workload, "QuotaReserved")
    admission = (workload.get("status") or {}).get("admission") or {}
    return KueueView(
        evicted=(evicted.get("message") or evicted.get("reason") or "evicted")
        if evicted and evicted.get("status") == "True"
        else None,
        pending=(reserved.get("message") or None) if reserved and reserved.get("status") == "False" else None,
        cluster_queue=admission.get("clusterQueue"),
    )
