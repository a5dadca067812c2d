"""What the operator's handlers share, made once at start-up and kept in kopf's memo."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import kopf
from lightkube import AsyncClient

from coxswain.kube import make_client


def _resource_version(obj: dict[str, Any]) -> int:
    # Opaque by contract, an etcd revision in practice; unknown shapes compare as oldest.
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class Runtime:
    client: AsyncClient
    http: httpx.AsyncClient
    wakers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    # The object as our own last status write returned it: a pass that runs before the watch
    # delivers that write must not act on the older body (it would restart a gang twice).
    written: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Runtime:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        return cls(client=make_client(), http=httpx.AsyncClient(limits=limits))

    @staticmethod
    def of(memo: kopf.Memo) -> Runtime:
        runtime: Runtime = memo["runtime"]
        return runtime

    def waker(self, namespace: str, name: str) -> asyncio.Event:
        return self.wakers.setdefault((namespace, name), asyncio.Event())

    def wake(self, namespace: str, name: str) -> None:
        event = self.wakers.get((namespace, name))
        if event is not None:
            event.set()

    def forget(self, namespace: str, name: str) -> None:
        self.wakers.pop((namespace, name), None)
        self.written.pop((namespace, name), None)

    def remember(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata", {})
        self.written[(meta.get("namespace", ""), meta.get("name", ""))] = obj

    def freshest(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        mine = self.written.get(key)
        if mine is None or _resource_version(body) >= _resource_version(mine):
            self.written.pop(key, None)
            return body
        return mine

    async def close(self) -> None:
        await self.http.aclose()
        await self.client.close()
