"""Helpers for TrainingJobs on the real node: the trainer image (imported once), the operator as a
host process, a namespace, rank logs streamed for the whole life of a pod, and the host-side
handle on one rank's process (the node's containers are host processes in namespaces)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from lightkube.resources.core_v1 import Node
from test_trainingjob_on_real_node import trainer_layout

from cluster_fixtures import ClusterHandle
from coxswain.devcluster import DevCluster
from coxswain.devcluster.realnode import REAL_NODE_LABEL

IMAGES_CACHE = Path.home() / ".cache" / "coxswain" / "images"


def node_has_image(cluster: ClusterHandle, image: str) -> bool:
    """True when the real node already reports `image` (kubelet lists the node's images)."""
    for node in cluster.client.list(Node, labels={REAL_NODE_LABEL: "true"}):
        images = (node.status.images or []) if node.status else []
        if any(image in (i.names or []) for i in images):
            return True
    return False


@pytest.fixture(scope="module")
def durable_trainer_image(real_cluster: ClusterHandle, real_dev: DevCluster) -> str:
    """The trainer image on the real node; the ~6 GB import (minutes) only when it is missing."""
    found = trainer_layout()
    if found is None:
        pytest.skip(f"no trainer image layout under {IMAGES_CACHE}: run `make images` first")
    layout, name = found
    if not node_has_image(real_cluster, name):
        real_dev.load_image(layout)
    return str(name)


def parse_event(line: str) -> dict[str, Any] | None:
    """One trainer log line (`time=... rank=0 event=... step=40`) as a dict; None for other lines
    (torchrun's own). Values with spaces or quotes are JSON strings, which shlex reads back."""
    start = line.find("time=")
    if start < 0:
        return None
    try:
        words = shlex.split(line[start:])
    except ValueError:
        return None
    record = dict(w.split("=", 1) for w in words if "=" in w)
    return record if "event" in record else None


def wall(record: dict[str, Any]) -> float:
    """A trainer log line's time (UTC, ms) as seconds since the epoch."""
    return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00")).timestamp()


@dataclass
class PodLog:
    """`kubectl logs -f` of one pod for its whole life: the lines survive the pod's deletion."""

    records: list[dict[str, Any]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None

    @classmethod
    def follow(cls, cluster: ClusterHandle, ns: str, pod: str) -> PodLog:
        log = cls()
        log.proc = subprocess.Popen(
            [str(cluster.bin_dir / "kubectl"), "logs", "-f", "-n", ns, pod],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=cluster.env(),
        )
        log.reader = threading.Thread(target=log._read, daemon=True)
        log.reader.start()
        return log

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            record = parse_event(line)
            if record is not None:
                self.records.append(record)

    def events(self, event: str, rank: int | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in list(self.records)
            if r.get("event") == event and (rank is None or str(r.get("rank")) == str(rank))
        ]

    def close(self, timeout: float = 30) -> None:
        """Wait for the stream to end (the container exited); stop it after `timeout`."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(10)
        if self.reader is not None:
            self.reader.join(10)


def rank_pids(ns: str, job: str, attempt: int, rank: int) -> list[int]:
    """Host pids of the processes of one rank of one attempt (torchrun's worker, and any child
    that inherited its RANK), found by the environment the operator and torchrun gave them."""
    want = {
        f"COXSWAIN_JOB_NAMESPACE={ns}".encode(),
        f"COXSWAIN_JOB_NAME={job}".encode(),
        f"COXSWAIN_ATTEMPT={attempt}".encode(),
        f"RANK={rank}".encode(),
    }
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue  # gone, or a kernel thread
        if want <= env:
            found.append(int(entry.name))
    return found


def sigkill_rank(ns: str, job: str, attempt: int, rank: int) -> list[int]:
    pids = rank_pids(ns, job, attempt, rank)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids
