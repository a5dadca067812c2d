"""Truthful readiness: what the pods' own status says about the model and the replicas.

`Ready` is the one condition a client may trust, so it is computed from the pods, not from
the Deployment's summary: at least max(1, minReplicas) pods must be ready (their readiness
probe is green only once every version in the traffic file is loaded and warmed up), none
of them terminating, and every pod that answers /metrics must already apply the current
weights. Crash-looping pods and a model that cannot load are named, with the server's own
words from the termination message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coxswain.api.conditions import ModelServiceReason as R
from coxswain.modelservice import naming

# A container restarted this often is crash looping even between back-off waits.
CRASH_RESTARTS = 3


@dataclass
class PodReport:
    existing: int = 0
    ready: int = 0
    ready_names: list[str] = field(default_factory=list)
    crash_looping: list[str] = field(default_factory=list)
    load_failure: str | None = None  # the server's message, when it could not load the model
    pending: str | None = None  # why a pod is not running yet (scheduler, image, ...)


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )


def _server_status(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == naming.CONTAINER:
            return dict(cs)
    return None


def _terminated_message(cs: dict[str, Any]) -> str | None:
    for key in ("state", "lastState"):
        term = (cs.get(key) or {}).get("terminated")
        if term and term.get("exitCode", 0) != 0:
            text = (term.get("message") or "").strip()
            return text or f"exit code {term.get('exitCode')} ({term.get('reason') or 'Error'})"
    return None


def inspect_pods(pods: list[dict[str, Any]]) -> PodReport:
    report = PodReport()
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if pod["metadata"].get("deletionTimestamp"):
            continue  # going away: neither capacity nor a problem
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        report.existing += 1
        name = pod["metadata"]["name"]
        if _ready(pod):
            report.ready += 1
            report.ready_names.append(name)
        cs = _server_status(pod)
        if cs is not None:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            restarts = int(cs.get("restartCount") or 0)
            failed = _terminated_message(cs)
            if waiting.get("reason") == "CrashLoopBackOff" or (restarts >= CRASH_RESTARTS and failed):
                report.crash_looping.append(f"{name} (restarted {restarts} times)")
            if failed and report.load_failure is None:
                report.load_failure = failed
            if waiting.get("reason") in ("ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"):
                report.pending = (
                    report.pending or f"pod {name}: {waiting.get('reason')}: {waiting.get('message', '')}"
                )
        if status.get("phase") == "Pending" and report.pending is None:
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    report.pending = (
                        f"pod {name} cannot be scheduled: {cond.get('message') or cond.get('reason')}"
                    )
    return report


def load_failure_reason(message: str) -> R:
    text = message.lower()
    if "checksum" in text or "sha256" in text:
        return R.CHECKSUM_MISMATCH
    if "no versions" in text or "not found" in text or "no such file" in text or "does not exist" in text:
        return R.MODEL_NOT_FOUND
    return R.LOAD_FAILED


def weights_applied(expected: dict[str, int], reported: dict[str, float]) -> bool:
    """Does a pod's `coxswain_server_traffic_weight` match the traffic file the operator wrote?"""
    return all(abs(reported.get(v, -1.0) - w) < 1e-9 for v, w in expected.items())
