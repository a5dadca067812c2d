"""Tell pod failures apart, so a restart budget is charged for the right thing.

Kubeflow's users complain that restart limits count the wrong thing: an eviction or a node
going away is not the training code's fault. Every failed pod is put in one cause; the
gang's cause is the one pod that failed *first for a reason of its own*: peers that exit
because a rank died (exit code 3 from coxswain_trainer, or torchrun's own 1 after a peer
vanished) and pods killed by our teardown (143) are followers, not the cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

PEER_DIED_EXIT_CODE = 3
CONFIG_ERROR_EXIT_CODE = 2
SIGTERM_EXIT_CODE = 143


class FailureCause(StrEnum):
    USER_ERROR = "UserError"  # the training code exited non-zero
    OOM_KILLED = "OOMKilled"
    EVICTED = "Evicted"  # node pressure or the Eviction API
    NODE_LOST = "NodeLost"  # the node went away; pod garbage-collected or marked lost
    PREEMPTED = "Preempted"  # the scheduler made room for a higher-priority pod
    CONFIG_ERROR = "ConfigError"  # the trainer refused its config: retrying cannot help


@dataclass(frozen=True)
class PodFailure:
    pod: str
    cause: FailureCause
    exit_code: int | None
    message: str
    finished_at: str  # RFC 3339; sorts chronologically as text
    follower: bool  # failed because another member failed, not on its own

    def describe(self) -> str:
        code = f" with exit code {self.exit_code}" if self.exit_code is not None else ""
        return f"pod {self.pod} {self.cause.value}{code}: {self.message}".rstrip(": ")


_DISRUPTION_REASONS = {
    "PreemptionByScheduler": FailureCause.PREEMPTED,
    "EvictionByEvictionAPI": FailureCause.EVICTED,
    "TerminationByKubelet": FailureCause.EVICTED,
    "DeletionByTaintManager": FailureCause.NODE_LOST,
    "DeletionByPodGC": FailureCause.NODE_LOST,
}


def classify_pod_failure(pod: dict[str, Any]) -> PodFailure | None:
    """The cause of a failed pod, or None when the pod has not failed."""
    meta = pod.get("metadata", {})
    status = pod.get("status", {})
    name = meta.get("name", "?")
    if status.get("phase") != "Failed":
        return None
    terminated = _terminated_state(status)
    exit_code = terminated.get("exitCode") if terminated else None
    finished = (terminated or {}).get("finishedAt") or meta.get("deletionTimestamp") or ""
    message = ((terminated or {}).get("message") or status.get("message") or "").strip()

    for cond in status.get("conditions", []):
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            cause = _DISRUPTION_REASONS.get(cond.get("reason", ""), FailureCause.EVICTED)
            return PodFailure(
                name, cause, exit_code, cond.get("message", "") or message, finished, follower=False
            )
    reason = status.get("reason", "")
    if reason == "Evicted":
        return PodFailure(name, FailureCause.EVICTED, exit_code, message, finished, follower=False)
    if reason in ("NodeLost", "UnexpectedAdmissionError", "NodeShutdown", "Terminated"):
        return PodFailure(
            name, FailureCause.NODE_LOST, exit_code, message or reason, finished, follower=False
        )
    if terminated and terminated.get("reason") == "OOMKilled":
        return PodFailure(
            name,
            FailureCause.OOM_KILLED,
            exit_code,
            "the container ran out of memory; raise spec.resources.memory",
            finished,
            follower=False,
        )
    if exit_code == CONFIG_ERROR_EXIT_CODE:
        return PodFailure(
            name,
            FailureCause.CONFIG_ERROR,
            exit_code,
            message or "the trainer refused its configuration",
            finished,
            follower=False,
        )
    # Killed by teardown (the Job controller ending the rest of a failed gang) or quitting
    # because a peer died: a consequence, not the cause.
    # Any exit code: torchrun itself exits 1 after its workers checkpointed on SIGTERM.
    torn_down = bool(meta.get("deletionTimestamp"))
    follower = torn_down or exit_code in (PEER_DIED_EXIT_CODE, SIGTERM_EXIT_CODE)
    return PodFailure(name, FailureCause.USER_ERROR, exit_code, message, finished, follower=follower)


def _terminated_state(status: dict[str, Any]) -> dict[str, Any] | None:
    for cs in status.get("containerStatuses", []) or []:
        state = cs.get("state", {}) or {}
        if "terminated" in state:
            term: dict[str, Any] = state["terminated"]
            return term
        last = cs.get("lastState", {}) or {}
        if "terminated" in last:
            last_term: dict[str, Any] = last["terminated"]
            return last_term
    return None


def root_cause(pods: list[dict[str, Any]]) -> PodFailure | None:
    """The failure that brought the gang down: the earliest failure of a non-follower.

    Infrastructure causes (eviction, preemption, node loss) win over a user error at the
    same moment, since they explain the user-code exit that often follows them.
    """
    failures = [f for p in pods if (f := classify_pod_failure(p)) is not None]
    if not failures:
        return None
    leaders = [f for f in failures if not f.follower] or failures
    infra = [
        f
        for f in leaders
        if f.cause in (FailureCause.EVICTED, FailureCause.NODE_LOST, FailureCause.PREEMPTED)
    ]
    pool = infra or leaders
    return min(pool, key=lambda f: (f.finished_at or "~", f.pod))
