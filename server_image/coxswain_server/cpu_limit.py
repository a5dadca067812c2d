"""How many CPUs this container may use, so torch does not oversubscribe a CPU-limited pod.

torch defaults to one intra-op thread per *host* core; in a pod limited to 1 CPU on a
64-core node that is 64 threads fighting for one core's quota, which throttles badly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_cpus() -> float | None:
    try:
        quota, period = CGROUP_V2_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(CGROUP_V1_QUOTA.read_text())
        period_us = int(CGROUP_V1_PERIOD.read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def cpu_limit(env: str = "COXSWAIN_CPU_LIMIT") -> int:
    """CPUs to use: `env` if set (the operator passes the pod's limit), else the cgroup quota,
    else the CPUs this process may run on; at least 1, fractional limits rounded up."""
    value = os.environ.get(env)
    if value:
        try:
            return max(1, math.ceil(float(value)))
        except ValueError:
            pass
    quota = _cgroup_cpus()
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if quota is not None:
        return max(1, min(available, math.ceil(quota)))
    return max(1, available)
