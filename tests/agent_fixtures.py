"""The node agent as a real process against the local cluster (tests marked `e2e`).

`agent` (module): `coxswain dev agent` with a node of its own (name `e2e-<hex>`, label
`coxswain.dev/agent=<name>` for nodeSelectors), a short crash-loop back-off, stopped with
SIGTERM afterwards; the fixture then checks that nothing of it is left. `start_agent`
(function): a factory for tests that stop or kill an agent themselves.

Loaded from tests/conftest.py with `pytest_plugins`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lightkube import ApiError
from lightkube.resources.core_v1 import Node

from cluster_fixtures import ClusterHandle, wait_for

AGENT_LABEL = "coxswain.dev/agent"


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


@dataclass
class AgentProcess:
    cluster: ClusterHandle
    node_name: str
    data_dir: Path
    log_path: Path
    backoff: float = 0.5
    proc: subprocess.Popen[bytes] | None = None
    started_pids: set[int] = field(default_factory=set)

    @property
    def selector(self) -> dict[str, str]:
        return {AGENT_LABEL: self.node_name}

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "coxswain",
                    "dev",
                    "agent",
                    "--node-name",
                    self.node_name,
                    "--labels",
                    f"{AGENT_LABEL}={self.node_name}",
                    "--data-dir",
                    str(self.data_dir),
                    "--restart-backoff",
                    str(self.backoff),
                    "--cpu",
                    "8",
                    "--gpus",
                    "2",
                ],
                env=self.cluster.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"the agent exited with {self.proc.returncode}:\n{self.log_tail()}")
            node = self.cluster.client.get(Node, self.node_name)
            # A Node left by an earlier, killed agent still looks Ready: wait for this one's.
            note = (
                (node.metadata.annotations or {}).get("coxswain.dev/node-agent", "") if node.metadata else ""
            )
            if not note.startswith(f"pid {self.proc.pid} "):
                return False
            conds = {c.type: c.status for c in (node.status.conditions or [])} if node.status else {}
            return conds.get("Ready") == "True"

        wait_for(ready, timeout, f"node {self.node_name} Ready")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                pytest.fail(
                    f"the agent did not stop within {timeout:.0f} s after {sig.name}:\n{self.log_tail()}"
                )
        return self.proc.returncode

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def pod_dir(self, namespace: str, pod: str) -> Path | None:
        found = sorted(self.data_dir.glob(f"pods/{namespace}_{pod}_*"))
        return found[-1] if found else None

    def container_pids(self, namespace: str, pod: str) -> list[int]:
        """Host PIDs of the pod's container PID-1 processes (from the agent's sandbox record)."""
        d = self.pod_dir(namespace, pod)
        if d is None or not (d / "sandbox.json").exists():
            return []
        record = json.loads((d / "sandbox.json").read_text())
        return [p["init"] for p in record["processes"] if p.get("init")]

    def log_file(self, namespace: str, pod: str, container: str) -> Path | None:
        found = sorted(self.data_dir.glob(f"logs/{namespace}_{pod}_*/{container}/*.log"))
        return found[-1] if found else None

    def leftovers(self) -> list[str]:
        """What of this agent is still there: the Node, namespaces, links, processes."""
        from coxswain.nodeagent.config import short_id

        left: list[str] = []
        try:
            self.cluster.client.get(Node, self.node_name)
            left.append(f"Node {self.node_name}")
        except ApiError:
            pass
        bridge = f"cxbr{short_id(self.node_name)}"
        if bridge in _links():
            left.append(f"bridge {bridge}")
        record_dirs = list(self.data_dir.glob("pods/*"))
        left += [f"pod dir {d}" for d in record_dirs]
        left += [
            f"process {pid}" for pid in self.started_pids if Path(f"/proc/{pid}").exists() and _alive(pid)
        ]
        return left


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _make(cluster: ClusterHandle, tmp: Path) -> AgentProcess:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    # Not under /tmp: see coxswain.nodeagent.config.default_data_dir.
    data_dir = Path.home() / ".cache" / "coxswain" / "agent-tests" / name
    return AgentProcess(cluster, name, data_dir, tmp / f"agent-{name}.log")


@pytest.fixture(scope="module")
def agent(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    handle = _make(cluster, tmp_path_factory.mktemp("agent"))
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()
        print(f"agent log: {handle.log_path}")
        left = handle.leftovers()
        assert not left, f"the agent left {left}:\n{handle.log_tail()}"
        shutil.rmtree(handle.data_dir, ignore_errors=True)


@pytest.fixture
def start_agent(cluster: ClusterHandle, tmp_path: Path) -> Iterator[Callable[[], AgentProcess]]:
    made: list[AgentProcess] = []

    def start() -> AgentProcess:
        handle = _make(cluster, tmp_path)
        handle.start()
        made.append(handle)
        return handle

    yield start
    for handle in made:
        if handle.proc is not None and handle.proc.poll() is None:
            handle.stop()
        if not handle.leftovers():
            shutil.rmtree(handle.data_dir, ignore_errors=True)
