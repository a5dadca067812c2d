"""Where a local cluster keeps its files, and the state file that lets `down` find it.

The state file is rewritten after every process start, so a crash or Ctrl-C part way
through `up` still leaves a record of every process that has to be stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

CLUSTER_DIR_ENV = "COXSWAIN_CLUSTER_DIR"


def default_cluster_dir() -> Path:
    """`$COXSWAIN_CLUSTER_DIR`, else `~/.cache/coxswain/cluster`."""
    override = os.environ.get(CLUSTER_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return Path.home() / ".cache" / "coxswain" / "cluster"


@dataclass(frozen=True)
class ClusterPaths:
    """The fixed layout under one cluster directory."""

    root: Path

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        """Component kubeconfigs and the kwok configuration."""
        return self.root / "run"

    @property
    def users_dir(self) -> Path:
        """One file per live test session using the cluster (see tests/cluster_fixtures.py)."""
        return self.root / "users"

    def make(self) -> None:
        for d in (self.root, self.pki_dir, self.logs_dir, self.run_dir, self.users_dir):
            d.mkdir(parents=True, exist_ok=True)


class ProcessRecord(BaseModel):
    """One started component. `start_ticks` tells a live process from a reused PID."""

    name: str
    pid: int
    start_ticks: int
    log: Path


class ClusterState(BaseModel):
    """What `up` started; read by `status`, `env` and `down`."""

    cluster_dir: Path
    bin_dir: Path
    data_dir: Path = Field(description="etcd's data, a temporary directory removed by `down`")
    ports: dict[str, int] = Field(default_factory=dict)
    processes: list[ProcessRecord] = Field(default_factory=list)
    gpu_nodes: int = 0
    cpu_nodes: int = 0
    real_nodes: int = 0
    node_slot: int | None = Field(default=None, description="the real nodes' address slot (realnode_plan.py)")
    started_at: float = Field(default_factory=time.time)
    ready: bool = False

    @property
    def api_server_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"


def load_state(paths: ClusterPaths) -> ClusterState | None:
    """The recorded state, or None when there is none or it cannot be read."""
    try:
        return ClusterState.model_validate_json(paths.state_file.read_text())
    except (OSError, ValueError):
        return None


def save_state(paths: ClusterPaths, state: ClusterState) -> None:
    # Write then rename: a crash mid-write must not lose the PIDs already recorded.
    tmp = paths.state_file.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    tmp.replace(paths.state_file)


def clear_state(paths: ClusterPaths) -> None:
    paths.state_file.unlink(missing_ok=True)
