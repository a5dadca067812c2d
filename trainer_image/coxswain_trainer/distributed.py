"""Process-group set-up from torchrun's environment, and telling a dead peer from a user error."""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_SECONDS = 300.0

# Messages the gloo and NCCL backends raise (as plain RuntimeError) when the other side went
# away or a collective timed out. Matched loosely: the wording moves between torch releases.
_PEER_FAILURE = re.compile(
    r"connection closed by peer|connection reset|connection refused|broken pipe|timed out|"
    r"timeout|remote worker|nccl|gloo|socket|pair\.cc",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Topology:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def collective_timeout() -> datetime.timedelta:
    """How long a collective may wait for a peer before the run fails (exit code 3).

    The default of 5 minutes covers a slow evaluation on one rank; a dead peer is normally
    seen much sooner, as a closed connection.
    """
    seconds = float(os.environ.get("COXSWAIN_COLLECTIVE_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS))
    return datetime.timedelta(seconds=seconds)


def choose_backend(requested: str) -> str:
    if requested == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return requested


def init_from_env(requested_backend: str = "auto") -> Topology:
    """Join the process group torchrun described in the environment (or run alone without it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size if world_size > 0 else 1)))
    backend = choose_backend(requested_backend)
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # env:// reads MASTER_ADDR/MASTER_PORT, which torchrun sets after rendezvous.
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=collective_timeout(),
            device_id=device if backend == "nccl" else None,
        )
    return Topology(rank, world_size, local_rank, local_world_size, device, backend)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_peer_failure(exc: BaseException) -> bool:
    """True when `exc` says a collective failed because another rank died or hung."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and dist.is_initialized() and bool(_PEER_FAILURE.search(str(exc)))


def cpu_limit() -> float | None:
    """The container's CPU limit from cgroups (v2, then v1), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def threads_per_process(local_world_size: int) -> int:
    """Intra-op threads for this process: the node's CPUs shared by the processes on it.

    An explicit OMP_NUM_THREADS wins (torchrun sets it to 1 with several processes per node,
    which is also what this formula gives on small nodes).
    """
    explicit = os.environ.get("OMP_NUM_THREADS")
    if explicit and explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    cpus = float(len(os.sched_getaffinity(0)))
    limit = cpu_limit()
    if limit is not None:
        cpus = min(cpus, limit)
    return max(1, int(cpus // max(1, local_world_size)))
