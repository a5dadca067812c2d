"""Keep every cluster address range on this machine.

kwok pods (10.244.0.0/16), kwok nodes (10.1.0.0/16, 10.2.0.0/16) and Services (10.0.0.0/24)
have addresses that no network interface here owns, so without a route of their own a
progress pull or a metrics scrape aimed at them would follow the host's default route off
the machine. `up` installs an `unreachable` route for each range before any pod exists
(a connection then fails at once with EHOSTUNREACH instead of leaving), and `down` removes
them once no other local cluster holds them. More specific routes (a real node's pod /24 on
its bridge) still win over these by longest-prefix match.

Several clusters (one per cluster directory) share the host's routing table, so each
registers a hold in /run/coxswain/routes; the routes go with the last hold. /run is a tmpfs:
after a reboot the holds and the routes are gone together.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

from coxswain.devcluster.components import POD_CIDR, SERVICE_CIDR
from coxswain.devcluster.kwok_nodes import KWOK_NODE_CIDRS

log = logging.getLogger("coxswain.devcluster")

CLUSTER_RANGES: tuple[str, ...] = (POD_CIDR, SERVICE_CIDR, *KWOK_NODE_CIDRS)
HOLDS_DIR = Path("/run/coxswain/routes")


class RouteError(RuntimeError):
    """The cluster ranges could not be kept local; the message says what to do."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=10)


def _hold_file(cluster_root: Path, holds_dir: Path) -> Path:
    return holds_dir / hashlib.sha256(str(cluster_root).encode()).hexdigest()[:16]


def hold(cluster_root: Path, holds_dir: Path = HOLDS_DIR, ranges: tuple[str, ...] = CLUSTER_RANGES) -> None:
    """Install the unreachable routes (idempotent) and record this cluster as holding them."""
    holds_dir.mkdir(parents=True, exist_ok=True)
    _hold_file(cluster_root, holds_dir).write_text(str(cluster_root))
    for cidr in ranges:
        done = _ip("route", "replace", "unreachable", cidr)
        if done.returncode != 0:
            raise RouteError(
                f"could not add the route `unreachable {cidr}` ({done.stderr.strip()}): without it, "
                "traffic to the cluster's pods and Services would leave this machine by the default "
                "route. Run `coxswain dev cluster up` as root (it needs CAP_NET_ADMIN)."
            )


def release(
    cluster_root: Path,
    is_live: Callable[[Path], bool] | None = None,
    holds_dir: Path = HOLDS_DIR,
    ranges: tuple[str, ...] = CLUSTER_RANGES,
) -> bool:
    """Drop this cluster's hold; remove the routes when no live cluster holds them any more.

    `is_live(root) -> bool` says whether another cluster directory still runs (default: its
    state file exists). Returns True when the routes were removed.
    """
    _hold_file(cluster_root, holds_dir).unlink(missing_ok=True)
    live = is_live or (lambda root: (root / "state.json").is_file())
    remaining = 0
    for other in holds_dir.glob("*") if holds_dir.is_dir() else []:
        if live(Path(other.read_text())):
            remaining += 1
        else:
            other.unlink(missing_ok=True)  # a cluster that died without `down`
    if remaining:
        log.info("keeping the cluster routes: %d other local cluster(s) still use them", remaining)
        return False
    for cidr in ranges:
        _ip("route", "del", "unreachable", cidr)
    return True


def leaves_machine(address: str) -> bool:
    """True when the kernel would send a packet for `address` through a gateway (off this
    machine). An unreachable route, a local bridge or loopback all count as staying here."""
    got = _ip("route", "get", address)
    return got.returncode == 0 and " via " in got.stdout
