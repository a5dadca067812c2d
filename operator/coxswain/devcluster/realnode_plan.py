"""Names and addresses of a cluster's real nodes, derived from the cluster directory.

Every name a real node leaves on the machine (network namespace, bridge, veth, cgroup root)
starts with a prefix hashed from the cluster directory, so two clusters never share one and
`down` can find what a killed `up` left by name alone.

Addresses: a cluster claims one slot S (0..255) at `up` and then uses
- 10.246.S.0/24 for the link between the host and its nodes: the host bridge is 10.246.S.1
  (the API server and CoreDNS listen there), node i is 10.246.S.(10+i);
- 10.247.S.0/24 for its pods: node i gives its pods 10.247.S.(64*i)/26 (10.245/16 is the node
  agent's, 10.244/16 kwok's).
Both ranges are routed to the cluster's bridge only, so no packet for them leaves the machine,
and kwok's ranges (pods 10.244/16, nodes 10.1/16 and 10.2/16) never overlap them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

MAX_REAL_NODES = 4
POD_RANGE = "10.247.0.0/16"
LINK_RANGE = "10.246.0.0/16"
CLUSTER_DNS_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"


def cluster_tag(cluster_dir: Path) -> str:
    """8 hex characters naming this cluster's machine-wide objects."""
    return hashlib.sha256(str(cluster_dir.resolve()).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class NodePlan:
    """One real node."""

    index: int
    name: str
    netns: str
    host_veth: str
    node_veth: str
    cgroup_root: str
    node_ip: str
    pod_cidr: str
    pod_gateway: str
    directory: Path


@dataclass(frozen=True)
class RealNodesPlan:
    """A cluster's real nodes and the host side they hang off."""

    tag: str
    slot: int
    bridge: str
    gateway_ip: str
    link_cidr: str
    pod_range: str
    nodes: tuple[NodePlan, ...]


def netns_prefix(tag: str) -> str:
    return f"coxswain-{tag}-"


def bridge_name(tag: str) -> str:
    return f"cx{tag}"  # 10 characters; Linux allows 15


def is_cluster_bridge(device: str) -> bool:
    """True for the host bridge of some cluster's real nodes (`bridge_name`)."""
    return len(device) == 10 and device.startswith("cx") and all(c in "0123456789abcdef" for c in device[2:])


def plan(cluster_dir: Path, slot: int, count: int) -> RealNodesPlan:
    """The plan for `count` real nodes of the cluster in `cluster_dir` using address slot `slot`."""
    if not 0 <= slot <= 255:
        raise ValueError(f"address slot must be 0..255, got {slot}")
    if not 1 <= count <= MAX_REAL_NODES:
        raise ValueError(f"real nodes: between 1 and {MAX_REAL_NODES} per cluster, got {count}")
    tag = cluster_tag(cluster_dir)
    nodes = tuple(
        NodePlan(
            index=i,
            name=f"realnode-{i}",
            netns=f"{netns_prefix(tag)}n{i}",
            host_veth=f"cx{tag}h{i}",
            node_veth="eth0",
            cgroup_root=f"/coxswain-{tag}-n{i}",
            node_ip=f"10.246.{slot}.{10 + i}",
            pod_cidr=f"10.247.{slot}.{64 * i}/26",
            pod_gateway=f"10.247.{slot}.{64 * i + 1}",
            directory=cluster_dir / "nodes" / f"n{i}",
        )
        for i in range(count)
    )
    return RealNodesPlan(
        tag=tag,
        slot=slot,
        bridge=bridge_name(tag),
        gateway_ip=f"10.246.{slot}.1",
        link_cidr=f"10.246.{slot}.0/24",
        pod_range=f"10.247.{slot}.0/24",
        nodes=nodes,
    )
