"""Cluster DNS as /etc/hosts lines: pod `hostname.subdomain` names and Service names.

Every pod gets its own hosts file (bind-mounted over /etc/hosts in its mount namespace);
short names (`svc`, `host.subdomain`) are listed for the pod's own namespace only, the way
the search path `<ns>.svc.cluster.local` makes them resolve on a cluster. A headless
Service's name resolves to every selected pod; a ClusterIP Service's name resolves to one
ready selected pod (the first by name) instead of a virtual IP, since nothing here proxies
ClusterIPs. Only pods of this node are known: they are the only ones reachable anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class PodAddress:
    namespace: str
    name: str
    ip: str
    hostname: str
    subdomain: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = False


@dataclass(frozen=True)
class HostEntry:
    ip: str
    namespace: str
    names: tuple[str, ...]  # qualified names, valid from every namespace
    short: tuple[str, ...]  # names that resolve only from the same namespace


def _qualified(name: str, namespace: str) -> tuple[str, ...]:
    return (f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}", f"{name}.{namespace}.svc", f"{name}.{namespace}")


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def host_entries(pods: Iterable[PodAddress], services: Iterable[Mapping[str, Any]]) -> list[HostEntry]:
    pods = sorted(pods, key=lambda p: (p.namespace, p.name))
    entries: list[HostEntry] = []
    by_name: dict[tuple[str, str], Mapping[str, Any]] = {}
    for svc in services:
        meta, spec = svc.get("metadata", {}), svc.get("spec") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        by_name[(ns, name)] = svc
        selector = spec.get("selector") or {}
        headless = spec.get("clusterIP") == "None"
        not_ready_ok = bool(spec.get("publishNotReadyAddresses"))
        chosen = [
            p
            for p in pods
            if p.namespace == ns and _selects(selector, p.labels) and (p.ready or not_ready_ok)
        ]
        if not headless:
            chosen = chosen[:1]
        entries += [HostEntry(p.ip, ns, _qualified(name, ns), (name,)) for p in chosen]
    for p in pods:
        if not p.subdomain:
            continue
        found = by_name.get((p.namespace, p.subdomain))
        # On a cluster the record exists only with a headless Service named after the subdomain.
        if found is None or (found.get("spec") or {}).get("clusterIP") != "None":
            continue
        if not (p.ready or (found.get("spec") or {}).get("publishNotReadyAddresses")):
            continue
        dotted = f"{p.hostname}.{p.subdomain}"
        entries.append(HostEntry(p.ip, p.namespace, _qualified(dotted, p.namespace), (dotted,)))
    return entries


def hosts_file(own: PodAddress, entries: Iterable[HostEntry]) -> str:
    lines = [
        "# Written by the coxswain node agent; rewritten when pods or Services change.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    if own.subdomain:
        lines.append(
            f"{own.ip}\t{own.hostname}.{own.subdomain}.{own.namespace}.svc.{CLUSTER_DOMAIN}\t{own.hostname}"
        )
    else:
        lines.append(f"{own.ip}\t{own.hostname}")
    for e in entries:
        names = list(e.names) + (list(e.short) if e.namespace == own.namespace else [])
        lines.append(f"{e.ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str) -> str:
    # No nameserver: glibc then asks 127.0.0.1 inside the pod's network namespace, where
    # nothing listens, so an unknown name fails at once instead of timing out on a DNS
    # server the pod cannot reach.
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"search {search}\noptions ndots:5 timeout:1 attempts:1\n"
