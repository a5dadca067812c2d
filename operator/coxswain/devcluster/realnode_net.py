"""The real nodes' network: a bridge on the host, one network namespace per node, a veth
between them, and routes that keep every cluster address on this machine.

Nothing here adds a default route or NAT: a node namespace reaches only the host bridge's
link and its sibling nodes' pod ranges, and the host forwards nothing (its ip_forward stays
as it was), so a pod can never send a packet off the machine.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
from pathlib import Path

from coxswain.devcluster.realnode_plan import NodePlan, RealNodesPlan, bridge_name, netns_prefix, plan

log = logging.getLogger("coxswain.devcluster")


class NetworkError(RuntimeError):
    """An `ip` command failed; the message carries its stderr."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def in_netns(netns: str, *argv: str) -> list[str]:
    """`argv` run inside `netns` (network namespace only: the mount namespace stays the
    host's, so kubelet's volume mounts are the ones containerd bind-mounts into containers)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]


def _sysctl_in(netns: str, settings: dict[str, str]) -> None:
    script = "; ".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in settings.items())
    result = subprocess.run(in_netns(netns, "sh", "-c", script), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetworkError(f"setting {settings} in {netns} failed: {result.stderr.strip()}")


def claim_bridge(cluster_dir: Path, count: int) -> RealNodesPlan:
    """Create the cluster's bridge and claim a free address slot for it.

    The claim is the route of the slot's pod range onto the bridge: the kernel refuses a
    second identical route, so two clusters starting at once cannot take the same slot.
    """
    first = plan(cluster_dir, 0, count)
    ip("link", "add", first.bridge, "type", "bridge")
    try:
        ip("link", "set", first.bridge, "up")  # a route needs its device up
        for slot in random.sample(range(256), 256):
            candidate = plan(cluster_dir, slot, count)
            if ip("route", "add", candidate.pod_range, "dev", candidate.bridge, check=False).returncode == 0:
                ip("addr", "add", f"{candidate.gateway_ip}/24", "dev", candidate.bridge)
                return candidate
        raise NetworkError(f"no free address slot in {first.pod_range}'s /16: 256 clusters with real nodes?")
    except BaseException:
        ip("link", "del", first.bridge, check=False)
        raise


def add_node(nodes: RealNodesPlan, node: NodePlan) -> None:
    """The node's namespace, its veth onto the bridge, and the routes to it and its siblings."""
    ip("netns", "add", node.netns)
    ip("link", "add", node.host_veth, "type", "veth", "peer", "name", node.node_veth, "netns", node.netns)
    ip("link", "set", node.host_veth, "master", nodes.bridge, "up")
    ns = ("-n", node.netns)
    ip(*ns, "link", "set", "lo", "up")
    ip(*ns, "addr", "add", f"{node.node_ip}/24", "dev", node.node_veth)
    ip(*ns, "link", "set", node.node_veth, "up")
    for other in nodes.nodes:
        if other.index != node.index:
            ip(*ns, "route", "add", other.pod_cidr, "via", other.node_ip)
    # The host reaches the node's pods (the operator pulls progress from them) through it.
    ip("route", "add", node.pod_cidr, "via", node.node_ip, "dev", nodes.bridge)
    # Forward between the pods' bridge and eth0; let kube-proxy's rules see bridged traffic
    # (a pod reaching a Service whose endpoint sits on the same bridge).
    _sysctl_in(node.netns, {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"})


def remove_all(tag: str) -> list[str]:
    """Delete every namespace, veth and bridge named for the cluster `tag`; routes go with
    the bridge. Returns what was removed."""
    removed: list[str] = []
    listing = ip("-j", "netns", "list", check=False).stdout.strip()
    for entry in json.loads(listing) if listing else []:
        name = entry.get("name", "")
        if name.startswith(netns_prefix(tag)):
            ip("netns", "del", name, check=False)
            removed.append(f"netns {name}")
    links = ip("-j", "link", "show", check=False).stdout.strip()
    bridge = bridge_name(tag)
    for entry in json.loads(links) if links else []:
        name = entry.get("ifname", "")
        if name.startswith(f"cx{tag}h"):
            ip("link", "del", name, check=False)
            removed.append(f"veth {name}")
    if ip("link", "show", bridge, check=False).returncode == 0:
        ip("link", "del", bridge, check=False)
        removed.append(f"bridge {bridge}")
    return removed
