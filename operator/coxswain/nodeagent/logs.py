"""Where the agent keeps container logs, and reading them back (`coxswain logs`).

`<agent dir>/<node>/logs/<namespace>_<pod>_<uid>/<container>/<restart>.log`, one file per
container start; kept after the pod is gone until the agent's next start.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from coxswain.nodeagent.config import agents_root


class LogNotFound(LookupError):
    """No agent has logs for this pod/container; the message says what exists."""


@dataclass(frozen=True)
class ContainerLogs:
    node_dir: Path
    pod_key: str
    container: str
    files: tuple[Path, ...]  # by restart count, oldest first

    @property
    def pod_runtime_dir(self) -> Path:
        return self.node_dir / "pods" / self.pod_key


def _restart(path: Path) -> int:
    return int(path.stem) if path.stem.isdigit() else -1


def find_logs(
    pod: str, namespace: str, container: str | None, root: Path | None = None, node_dir: Path | None = None
) -> ContainerLogs:
    """Under every agent of `root` (default: the agents' root), or under one agent's `node_dir`."""
    root = root or agents_root()
    pattern = re.compile(rf"^{re.escape(namespace)}_{re.escape(pod)}_[0-9a-f-]+$")
    dirs = node_dir.glob("logs/*") if node_dir is not None else root.glob("*/logs/*")
    candidates = [d for d in dirs if d.is_dir() and pattern.match(d.name)]
    if not candidates:
        raise LogNotFound(f"no node agent under {root} has logs of pod {namespace}/{pod}")
    pod_dir = max(candidates, key=lambda d: d.stat().st_mtime)  # the newest pod of that name
    containers = sorted(d.name for d in pod_dir.iterdir() if d.is_dir())
    if container is None:
        if len(containers) != 1:
            raise LogNotFound(f"pod {namespace}/{pod} has containers {containers}: choose one with -c")
        container = containers[0]
    if container not in containers:
        raise LogNotFound(f"pod {namespace}/{pod} has no logs of container {container!r} (has {containers})")
    files = tuple(sorted((pod_dir / container).glob("*.log"), key=_restart))
    return ContainerLogs(pod_dir.parent.parent, pod_dir.name, container, files)


def follow(path: Path, runtime_dir: Path, offset: int = 0, poll: float = 0.2) -> Iterator[bytes]:
    """Yield what is appended to `path` until the pod's runtime directory is gone (the agent
    removes it once every container of the pod has ended) or a newer restart's file appears."""
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            newer = [p for p in path.parent.glob("*.log") if _restart(p) > _restart(path)]
            if newer or not runtime_dir.exists():
                rest = f.read()
                if rest:
                    yield rest
                if newer:
                    yield from follow(min(newer, key=_restart), runtime_dir, 0, poll)
                return
            time.sleep(poll)
