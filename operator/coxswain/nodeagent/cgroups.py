"""Memory limits and OOM detection with the cgroup v1 memory controller, where there is one.

Each container's process tree goes into `<the agent's memory cgroup>/coxswain-<node>/<id>`
with `memory.limit_in_bytes` set from `resources.limits.memory`; the kernel's `oom_kill`
counter then tells an OOM kill (reported as reason OOMKilled) from any other SIGKILL.
Where the controller is missing or read-only, limits are not enforced and the agent says so
once at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from coxswain.nodeagent.config import short_id

log = logging.getLogger(__name__)

MEMORY_MOUNT = Path("/sys/fs/cgroup/memory")


def _own_memory_cgroup() -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            for candidate in (MEMORY_MOUNT / path.lstrip("/"), MEMORY_MOUNT):
                if (candidate / "memory.limit_in_bytes").exists():
                    return candidate
    return None


class MemoryCgroups:
    def __init__(self, node_name: str) -> None:
        self.base: Path | None = None
        own = _own_memory_cgroup()
        if own is None:
            log.warning(
                "no cgroup v1 memory controller here: memory limits are not enforced, OOM kills show as Error"
            )
            return
        base = own / f"coxswain-{short_id(node_name)}"
        try:
            base.mkdir(exist_ok=True)
        except OSError as e:
            log.warning("cannot make memory cgroups in %s (%s): memory limits are not enforced", own, e)
            return
        self.base = base

    def create(self, name: str, limit_bytes: int | None) -> Path | None:
        if self.base is None:
            return None
        path = self.base / name
        try:
            path.mkdir(exist_ok=True)
            if limit_bytes is not None:
                (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        except OSError as e:
            log.warning(
                "memory cgroup %s not usable (%s): this container runs without a memory limit", path, e
            )
            return None
        return path

    @staticmethod
    def oom_killed(path: Path | None) -> bool:
        if path is None:
            return False
        try:
            for line in (path / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    @staticmethod
    def remove(path: Path | None) -> None:
        """Kill whatever is still in it (nothing should be), then remove it."""
        if path is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(OSError):
            path.rmdir()

    def remove_all(self) -> None:
        if self.base is None:
            return
        for child in self.base.iterdir():
            if child.is_dir():
                self.remove(child)
