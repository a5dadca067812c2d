"""No packet for a cluster address leaves this machine: the kwok pod, kwok node and Service
ranges are routed locally (as unreachable) while a cluster is up, and the routes go with the
last cluster that holds them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cluster_fixtures import ClusterHandle
from coxswain.devcluster import routes

pytestmark = pytest.mark.cluster

# One address in each range the local cluster hands out: a kwok pod, the `kubernetes` Service,
# a kwok GPU node and a kwok CPU node.
CLUSTER_ADDRESSES = ("10.244.1.1", "10.0.0.10", "10.1.0.1", "10.2.0.1")


@pytest.mark.parametrize("address", CLUSTER_ADDRESSES)
def test_cluster_addresses_do_not_leave_the_machine(cluster: ClusterHandle, address: str) -> None:
    got = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True, check=False)
    assert " via " not in got.stdout, f"{address} would leave by a gateway: {got.stdout}{got.stderr}"
    assert not routes.leaves_machine(address)


def test_routes_stay_while_another_cluster_holds_them_and_go_with_the_last(tmp_path: Path) -> None:
    # A range of its own (never a cluster's), so this test cannot remove the live cluster's routes.
    ranges = ("10.253.0.0/16",)
    holds = tmp_path / "holds"
    first, second = tmp_path / "first", tmp_path / "second"
    alive = {first, second}
    try:
        routes.hold(first, holds, ranges)
        routes.hold(second, holds, ranges)
        assert not routes.leaves_machine("10.253.4.4")

        alive.discard(first)
        assert not routes.release(first, alive.__contains__, holds, ranges)
        assert not routes.leaves_machine("10.253.4.4"), "the second cluster still needs the route"

        alive.discard(second)
        assert routes.release(second, alive.__contains__, holds, ranges)
        shown = subprocess.run(["ip", "route", "show", "10.253.0.0/16"], capture_output=True, text=True)
        assert shown.stdout.strip() == ""
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", "10.253.0.0/16"], capture_output=True)


def test_a_hold_whose_cluster_died_does_not_keep_the_routes(tmp_path: Path) -> None:
    ranges = ("10.252.0.0/16",)
    holds = tmp_path / "holds"
    crashed, ours = tmp_path / "crashed", tmp_path / "ours"
    try:
        routes.hold(crashed, holds, ranges)
        routes.hold(ours, holds, ranges)
        assert routes.release(ours, lambda root: False, holds, ranges)
        assert list(holds.iterdir()) == []
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", "10.252.0.0/16"], capture_output=True)
