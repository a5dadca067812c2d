"""Container and pod status as a kubelet reports them (pure: state in, status dict out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Bytes of a termination message the API keeps (the kubelet's limit per container).
MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRecord:
    """Everything reported about one container; mutated by its runner."""

    name: str
    image: str
    init: bool = False
    restart_count: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    container_id: str = ""
    # Final: terminated and will not run again (restart policy, pod terminating).
    done: bool = False

    def exit_code(self) -> int | None:
        term = self.state.get("terminated")
        return None if term is None else int(term["exitCode"])

    def ever_ran(self) -> bool:
        return "waiting" not in self.state or bool(self.last_state) or self.restart_count > 0

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": f"coxswain-agent://{self.image}",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def terminated_state(
    code: int, started_at: str | None, message: str, reason: str | None = None, container_id: str = ""
) -> dict[str, Any]:
    term: dict[str, Any] = {
        "exitCode": code,
        "reason": reason or ("Completed" if code == 0 else "Error"),
        "finishedAt": now(),
    }
    if started_at:
        term["startedAt"] = started_at
    if message:
        term["message"] = message
    if container_id:
        term["containerID"] = container_id
    if code > 128 and code - 128 < 65:
        term["signal"] = code - 128
    return {"terminated": term}


def termination_message(message_file: bytes, policy: str | None, exit_code: int, log_tail: bytes) -> str:
    """The file's text; with FallbackToLogsOnError and an empty file on failure, the log's end."""
    text = message_file[:MESSAGE_LIMIT].decode(errors="replace")
    if not text.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
        lines = log_tail.splitlines()[-FALLBACK_LOG_LINES:]
        text = b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")
    return text


def pod_phase(init: list[ContainerRecord], main: list[ContainerRecord], failed: bool) -> str:
    if failed:
        return "Failed"
    for c in init:
        if c.done and c.exit_code() != 0:
            return "Failed"
        if not (c.done and c.exit_code() == 0):
            return "Pending"
    if any(not c.ever_ran() for c in main):
        return "Pending"
    if all(c.done for c in main):
        return "Succeeded" if all(c.exit_code() == 0 for c in main) else "Failed"
    return "Running"


class Conditions:
    """Pod conditions with lastTransitionTime kept across reports."""

    def __init__(self) -> None:
        self._by_type: dict[str, dict[str, Any]] = {}

    def set(self, type_: str, status: bool, reason: str | None = None, message: str | None = None) -> None:
        value = "True" if status else "False"
        old = self._by_type.get(type_)
        cond: dict[str, Any] = {
            "type": type_,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == value else now(),
        }
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        self._by_type[type_] = cond

    def to_list(self) -> list[dict[str, Any]]:
        return list(self._by_type.values())
