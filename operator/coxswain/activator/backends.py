"""Which server pods of which ModelService are ready, from their Service's EndpointSlices,
and a way to wait for the first one.

Fed by a watch (watch.py); pure bookkeeping here so every rule is a unit test. Only the
endpointslice controller's slices count: the operator's own slice of the same Service
lists the activator itself, and proxying to it would loop.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coxswain.modelservice import naming

Key = tuple[str, str]  # (namespace, ModelService name)
Address = tuple[str, int]  # (pod IP, port)
# The server ports the activator proxies to, by their names on the Service and its slices.
PORT_NAMES = ("http", "grpc")
Endpoints = dict[str, list[Address]]  # port name -> ready addresses on that port

CONTROLLER_MANAGER = "endpointslice-controller.k8s.io"


def slice_key(body: Mapping[str, Any]) -> Key | None:
    """The ModelService a server slice belongs to; None for any other slice."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(naming.LABEL_SLICE_MANAGED_BY) != CONTROLLER_MANAGER:
        return None
    service = labels.get(naming.LABEL_SERVICE_NAME)
    if not service or naming.LABEL_MODELSERVICE not in labels:
        return None
    return (meta.get("namespace") or "", service)


def ready_endpoints(body: Mapping[str, Any]) -> Endpoints:
    """Ready endpoints on each of the slice's ports the activator proxies to."""
    return {name: ready_addresses(body, name) for name in PORT_NAMES}


def ready_addresses(body: Mapping[str, Any], port_name: str = "http") -> list[Address]:
    """Ready endpoints (a missing `ready` means ready) on the slice's port `port_name`."""
    port = next((p.get("port") for p in body.get("ports") or [] if p.get("name") == port_name), None)
    if not isinstance(port, int):
        return []
    out: list[Address] = []
    for endpoint in body.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        out.extend((ip, port) for ip in (endpoint.get("addresses") or [])[:1])
    return out


@dataclass
class Backends:
    """Ready server addresses per ModelService, and events set when the first one appears."""

    _slices: dict[Key, dict[str, Endpoints]] = field(default_factory=dict)
    _ready: dict[Key, asyncio.Event] = field(default_factory=dict)
    _turn: dict[Key, itertools.count[int]] = field(default_factory=dict)

    def update(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        key = slice_key(body)
        if key is None:
            return
        name = (body.get("metadata") or {}).get("name") or ""
        slices = self._slices.setdefault(key, {})
        if deleted:
            slices.pop(name, None)
        else:
            slices[name] = ready_endpoints(body)
        event = self._event(key)
        if self.addresses(key):
            event.set()
        else:
            event.clear()

    def replace(self, namespace: str | None, bodies: Sequence[Mapping[str, Any]]) -> None:
        """A (re)listing of `namespace` (None: all of them) is the whole truth there: slices
        deleted while no watch ran go, and their addresses with them."""
        fresh: dict[Key, dict[str, Endpoints]] = {}
        for body in bodies:
            key = slice_key(body)
            if key is not None:
                name = (body.get("metadata") or {}).get("name") or ""
                fresh.setdefault(key, {})[name] = ready_endpoints(body)
        for key in [k for k in self._slices if namespace is None or k[0] == namespace]:
            del self._slices[key]
        self._slices.update(fresh)
        for key, event in self._ready.items():
            if self.addresses(key):
                event.set()
            else:
                event.clear()
        for key in fresh:
            if self.addresses(key):
                self._event(key).set()

    def reset(self) -> None:
        """A new watch starts from a full listing: forget what the old one said."""
        self._slices.clear()
        for event in self._ready.values():
            event.clear()

    def addresses(self, key: Key, port_name: str = "http") -> list[Address]:
        """Ready addresses on `port_name`; readiness itself is told by the `http` port, which
        every server pod has."""
        return [a for ports in self._slices.get(key, {}).values() for a in ports.get(port_name, [])]

    def pick(self, key: Key, port_name: str = "http") -> Address | None:
        """One ready address on `port_name`, round robin; None while there is none."""
        found = self.addresses(key, port_name)
        if not found:
            return None
        turn = next(self._turn.setdefault(key, itertools.count()))
        return found[turn % len(found)]

    def _event(self, key: Key) -> asyncio.Event:
        event = self._ready.get(key)
        if event is None:
            event = self._ready[key] = asyncio.Event()
        return event

    async def wait_ready(self, key: Key) -> None:
        """Return once `key` has a ready address (callers bound the wait)."""
        while not self.addresses(key):
            await self._event(key).wait()
