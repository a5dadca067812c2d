"""Container environment and command line as the kubelet makes them.

`$(VAR)` expands to an earlier-defined variable (env) or to any variable of the container
(command and args); `$$` is a literal `$`; a reference to an unknown variable stays as it is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

from coxswain.quantity import parse_quantity, whole_cores

# (namespace, name) -> the object's data as text, or None when it does not exist.
DataLookup = Callable[[str, str], Awaitable[dict[str, str] | None]]


class EnvError(Exception):
    """A variable cannot be made; the message names it (the kubelet's CreateContainerConfigError)."""


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubelet `$(VAR)` expansion (k8s.io/kubernetes/third_party/forked/golang/expansion semantics)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(variables[name] if name in variables else text[i : end + 1])
            i = end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


_LABEL_PATH = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward-API fieldRef, as the kubelet supports them for env."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    m = _LABEL_PATH.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs") or []),
    }
    if path not in simple:
        raise EnvError(
            f"fieldRef.fieldPath {path!r} is not supported (supported: {', '.join(simple)}, metadata.labels['…'], metadata.annotations['…'])"
        )
    return "" if simple[path] is None else str(simple[path])


def resource_value(
    container: Mapping[str, Any], ref: Mapping[str, Any], node_allocatable: Mapping[str, str]
) -> str:
    """resourceFieldRef: limits fall back to the node's allocatable, as on a real node."""
    resource: str = ref["resource"]
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise EnvError(f"resourceFieldRef.resource {resource!r} is not supported")
    amounts = (container.get("resources") or {}).get(kind) or {}
    raw = amounts.get(name)
    if raw is None:
        raw = node_allocatable.get(name, "0") if kind == "limits" else "0"
    # The API server fills an unset divisor in as "0"; it means 1.
    divisor = parse_quantity(ref.get("divisor") or "1") or Decimal(1)
    value: Decimal = parse_quantity(raw) / divisor
    return str(math.ceil(value))


async def build_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    node_allocatable: Mapping[str, str],
    config_maps: DataLookup,
    secrets: DataLookup,
) -> dict[str, str]:
    """The container's variables in the kubelet's order: envFrom, then env (later wins)."""
    ns: str = pod["metadata"]["namespace"]
    result: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, lookup in (("configMapRef", config_maps), ("secretRef", secrets)):
            ref = source.get(kind)
            if ref is None:
                continue
            data = await lookup(ns, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f"envFrom {kind} {ns}/{ref['name']} not found")
            result.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name: str = var["name"]
        if "valueFrom" not in var or var["valueFrom"] is None:
            result[name] = expand(var.get("value") or "", result)
            continue
        source = var["valueFrom"]
        if source.get("fieldRef"):
            result[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif source.get("resourceFieldRef"):
            result[name] = resource_value(container, source["resourceFieldRef"], node_allocatable)
        else:
            kind, lookup = (
                ("configMapKeyRef", config_maps)
                if source.get("configMapKeyRef")
                else ("secretKeyRef", secrets)
            )
            ref = source.get(kind)
            if ref is None:
                raise EnvError(f"env {name}: valueFrom has no source this agent supports")
            data = await lookup(ns, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                missing = (
                    f"{ns}/{ref['name']}" if data is None else f"key {ref['key']!r} in {ns}/{ref['name']}"
                )
                raise EnvError(f"env {name}: {kind} {missing} not found")
            result[name] = data[ref["key"]]
    return result


def cpu_threads(container: Mapping[str, Any]) -> int | None:
    """Whole cores of the CPU limit (at least 1), for OMP_NUM_THREADS and friends."""
    limit = ((container.get("resources") or {}).get("limits") or {}).get("cpu")
    if limit is None:
        return None
    return whole_cores(limit)
