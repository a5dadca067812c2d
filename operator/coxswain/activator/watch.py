"""The activator's two uses of the API server, and nothing more (its RBAC in the chart):

- list/watch EndpointSlices labelled with a ModelService: the endpointslice controller's
  slices say when a server pod is ready (a watch: the held request goes on at once);
- get/patch `modelservices/scale`: raise spec.replicas from 0 to 1, the wake-up. The
  operator's autoscaler takes it from there (and scales back to zero after
  scaleDownDelaySeconds without load).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx2
from lightkube import ALL_NS, ApiError, AsyncClient, operators
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import OnErrorAction, OnErrorResult, PatchType
from prometheus_client import Counter

from coxswain.activator.backends import Backends, Key
from coxswain.kube import MODELSERVICE_RESOURCE
from coxswain.modelservice import naming

log = logging.getLogger("coxswain.activator")

RETRY_SECONDS = 1.0
FATAL_CODES = frozenset({401, 403, 404})

WAKEUPS = Counter(
    "coxswain_activator_wakeups",
    "Times the activator raised a ModelService's replicas from 0",
    ["namespace", "modelservice"],
)


def _on_watch_error(exc: Exception, attempt: int) -> OnErrorResult:
    if isinstance(exc, ApiError) and exc.status.code == 410:
        # The resourceVersion is too old: events were missed (slices may have gone meanwhile).
        # Only a fresh listing says what exists now, so end this watch and list again.
        return OnErrorResult(OnErrorAction.RAISE)
    log.warning("EndpointSlice watch interrupted (%s); resuming", exc)
    return OnErrorResult(OnErrorAction.RETRY, sleep=min(RETRY_SECONDS * attempt, 10.0))


async def watch_slices(
    client: AsyncClient, backends: Backends, synced: asyncio.Event, namespaces: list[str] | None = None
) -> None:
    """Keep `backends` current, from every namespace or (a chart with watchNamespaces, where
    the activator holds Roles only there) from each of `namespaces`. `synced` is set once
    every namespace has been listed: before that a held request could miss a ready pod."""
    backends.reset()
    scopes: list[str | None] = list(namespaces) if namespaces else [None]
    listed = [asyncio.Event() for _ in scopes]

    async def all_listed() -> None:
        for event in listed:
            await event.wait()
        synced.set()

    waiter = asyncio.create_task(all_listed())
    try:
        await asyncio.gather(
            *(list_and_watch(client, backends, ns, ev) for ns, ev in zip(scopes, listed, strict=True))
        )
    finally:
        waiter.cancel()


async def list_and_watch(
    client: AsyncClient, backends: Backends, namespace: str | None, listed: asyncio.Event
) -> None:
    """List, replace what `backends` knows of this scope with the listing, watch from the
    listing's resourceVersion; on 410 Gone (or a failed listing) start over."""
    labels: dict[str, Any] = {naming.LABEL_MODELSERVICE: operators.exists()}
    scope = ALL_NS if namespace is None else namespace
    attempt = 0
    while True:
        try:
            listing = client.list(EndpointSlice, namespace=scope, labels=labels)
            bodies = [obj.to_dict() async for obj in listing]
            backends.replace(namespace, bodies)
            listed.set()
            attempt = 0
            async for op, obj in client.watch(
                EndpointSlice,
                namespace=scope,
                labels=labels,
                resource_version=listing.resourceVersion,
                on_error=_on_watch_error,
            ):
                backends.update(obj.to_dict(), deleted=op == "DELETED")
        except httpx2.HTTPError as exc:  # lightkube ships its httpx as httpx2
            code = exc.status.code if isinstance(exc, ApiError) else None
            if code in FATAL_CODES:
                raise  # the activator's RBAC or the API itself is wrong: retrying will not help
            if code == 410:
                log.info("EndpointSlice watch expired (410 Gone); listing the slices again")
                continue
            attempt += 1
            log.warning("listing EndpointSlices failed (%s); trying again", exc)
            await asyncio.sleep(min(RETRY_SECONDS * attempt, 10.0))


class Waker:
    """Raises a ModelService's replicas from 0 to 1: one ask to the API per service at once,
    and none within `min_interval` of the last one's end. Every held request asks (on arrival
    and every few seconds while it waits): a burst of 100 would otherwise read the scale
    subresource dozens of times a second while the pod starts."""

    def __init__(
        self, client: AsyncClient, clock: Callable[[], float] = time.monotonic, min_interval: float = 1.0
    ) -> None:
        self.client = client
        self.clock = clock
        self.min_interval = min_interval
        self._asks: dict[Key, asyncio.Task[bool]] = {}
        self._ended: dict[Key, float] = {}

    def wake(self, key: Key) -> asyncio.Task[bool]:
        task = self._asks.get(key)
        if task is not None:
            # The end is recorded inside the task, so a done task always has one (unless it
            # was cancelled before it ran: then ask again).
            ended = self._ended.get(key)
            if not task.done() or (ended is not None and self.clock() - ended < self.min_interval):
                return task
        self._ended.pop(key, None)
        task = self._asks[key] = asyncio.create_task(self._ask(key))
        task.add_done_callback(lambda t: _report(key, t))
        return task

    async def _ask(self, key: Key) -> bool:
        try:
            return await self._wake(key)
        finally:
            self._ended[key] = self.clock()

    async def _wake(self, key: Key) -> bool:
        """True when it raised the replicas; False when they were above zero already."""
        ns, name = key
        for _ in range(5):  # a conflict means someone else wrote replicas meanwhile: look again
            scale = await self.client.get(MODELSERVICE_RESOURCE.Scale, name, namespace=ns)
            replicas = scale.spec.replicas if scale.spec is not None else None
            if replicas is not None and replicas >= 1:
                return False
            version = scale.metadata.resourceVersion if scale.metadata is not None else None
            body = {"metadata": {"resourceVersion": version}, "spec": {"replicas": 1}}
            try:
                await self.client.patch(
                    MODELSERVICE_RESOURCE.Scale, name, body, namespace=ns, patch_type=PatchType.MERGE
                )
            except ApiError as exc:
                if exc.status.code == 409:
                    continue
                raise
            log.info("[%s/%s] a request arrived at zero replicas: raised replicas to 1", ns, name)
            return True
        return False


def _report(key: Key, task: asyncio.Task[bool]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("[%s/%s] could not raise the replicas (%s); asking again while requests wait", *key, exc)
    elif task.result():
        WAKEUPS.labels(*key).inc()
