"""Pod networking: one network namespace per pod, a veth pair to the agent's bridge.

The host side of the bridge holds the gateway address, so processes on the host (the
operator pulling /progress, tests, probes) reach pod IPs directly; pods on the bridge reach
each other at layer 2. Everything is done with iproute2's `ip` (Debian's), as root.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from coxswain.nodeagent.config import short_id

log = logging.getLogger(__name__)

NETNS_PREFIX = "cxpod-"


class NetworkError(RuntimeError):
    """An `ip` command failed; the message carries its stderr."""


async def ip(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {err.decode(errors='replace').strip()}")
    return out.decode()


def sandbox_names(pod_uid: str) -> tuple[str, str]:
    """(network namespace, host-side veth) for a pod: unique per pod UID, veth <= 15 chars."""
    sid = short_id(pod_uid, 10)
    return f"{NETNS_PREFIX}{sid}", f"cxh{sid}"


async def ensure_bridge(bridge: str, gateway: ipaddress.IPv4Address, prefix: int) -> None:
    await delete_link(bridge)
    await ip("link", "add", "name", bridge, "type", "bridge")
    await ip("addr", "add", f"{gateway}/{prefix}", "dev", bridge)
    await ip("link", "set", bridge, "up")


async def delete_link(name: str) -> None:
    await ip("link", "del", name, check=False)


async def create_sandbox(
    netns: str,
    veth_host: str,
    pod_ip: ipaddress.IPv4Address,
    prefix: int,
    gateway: ipaddress.IPv4Address,
    bridge: str,
) -> None:
    peer = f"cxc{veth_host[3:]}"
    await delete_sandbox(netns, veth_host)
    await ip("netns", "add", netns)
    try:
        await ip("link", "add", veth_host, "type", "veth", "peer", "name", peer)
        await ip("link", "set", peer, "netns", netns)
        await ip("link", "set", veth_host, "master", bridge, "up")
        await ip("-n", netns, "link", "set", peer, "name", "eth0")
        await ip("-n", netns, "addr", "add", f"{pod_ip}/{prefix}", "dev", "eth0")
        await ip("-n", netns, "link", "set", "eth0", "up")
        await ip("-n", netns, "link", "set", "lo", "up")
        await ip("-n", netns, "route", "add", "default", "via", str(gateway))
    except NetworkError:
        await delete_sandbox(netns, veth_host)
        raise


async def delete_sandbox(netns: str, veth_host: str) -> None:
    # Deleting the namespace deletes the veth inside it and with it the host end; the explicit
    # delete covers a namespace that is already gone while the host end is not.
    await ip("netns", "del", netns, check=False)
    await delete_link(veth_host)


async def list_netns() -> list[str]:
    out = await ip("netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class AddressPool:
    """Pod IPs from the node's CIDR: .1 is the gateway; the rest are handed out round-robin,
    so a freed address is not reused at once (the host's ARP cache may still point at the
    old pod's veth for a few seconds)."""

    def __init__(self, network: ipaddress.IPv4Network) -> None:
        self._all = list(network.hosts())[1:]
        self._used: set[ipaddress.IPv4Address] = set()
        self._next = 0

    def take(self) -> ipaddress.IPv4Address:
        for i in range(len(self._all)):
            addr = self._all[(self._next + i) % len(self._all)]
            if addr not in self._used:
                self._used.add(addr)
                self._next = (self._next + i + 1) % len(self._all)
                return addr
        raise NetworkError("the pod CIDR has no free address left: use a larger --pod-cidr")

    def give_back(self, addr: ipaddress.IPv4Address) -> None:
        self._used.discard(addr)


def host_networks() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(interface, network) of every IPv4 address on the host."""
    import subprocess

    out = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
    ).stdout
    nets = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            nets.append((fields[1], ipaddress.IPv4Network(fields[fields.index("inet") + 1], strict=False)))
    return nets


def free_pod_cidr(preferred: str, own_bridge: str) -> str:
    """`preferred` unless another interface (another agent's bridge) already uses it; then
    the next /24 of 10.245.0.0/16 that nothing on the host overlaps."""
    taken = [net for name, net in host_networks() if name != own_bridge]
    first = ipaddress.IPv4Network(preferred, strict=False)
    base = ipaddress.IPv4Network("10.245.0.0/16")
    subnets = list(base.subnets(new_prefix=24)) if first.subnet_of(base) else [first]
    start = subnets.index(first) if first in subnets else 0
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    raise NetworkError(f"no free /24 in {base} for pods: give --pod-cidr")
