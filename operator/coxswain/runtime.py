"""The one controller runtime both kinds run on.

watch (kopf handlers, every replica) -> a de-duplicated, per-key serialised work queue ->
one pass per key (only on the replica that leads):

    parse -> observe -> plan -> write status (once, only on change) -> act -> post events
    -> record metrics -> the delay until the next pass

with errors classified in one place: a spec that does not parse waits for a change (it
cannot fix itself); an API error, an unreachable API server or any other error is retried
after a per-key jittered back-off (the work queue's). Each kind (trainingjob.controller, modelservice.controller) supplies a
`Kind`: its parser, observation, planner, executor and metrics.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import kopf
from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType
from pydantic import ValidationError

from coxswain import events, metrics
from coxswain.clock import Clock, LoopClock
from coxswain.kube import is_namespace_terminating, make_client
from coxswain.leadership import Leadership
from coxswain.own_writes import OwnWrites
from coxswain.tenancy import TenancyPolicy
from coxswain.workqueue import WorkQueue

Key = tuple[str, str]  # (namespace, name)

log = logging.getLogger("coxswain.runtime")

# Large and never read by a planner or a builder: not kept in memory for every object.
_DROPPED_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration",
    "coxswain.dev/last-handled-configuration",
)

# What older operators put on every ModelService (a kopf daemon needed it); removed on the
# first pass so that deleting one never waits for an operator again.
LEGACY_FINALIZER = "coxswain.dev/finalizer"


def slim_object(body: Mapping[str, Any]) -> dict[str, Any]:
    """A custom object as the planners read it: without managedFields and large annotations."""
    meta = dict(body.get("metadata", {}) or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in _DROPPED_ANNOTATIONS}
    return {**body, "metadata": meta}


class PlanLike(Protocol):
    status: Any  # a pydantic status model with to_dict()
    events: list[Any]  # coxswain.events.Event


class Kind(Protocol):
    """What one controller adds to the shared pass."""

    name: str  # the kind, e.g. "TrainingJob" (metrics labels, log lines)
    resource: Any  # the lightkube resource (its .Status is patched)
    workers: int
    resync: float  # seconds to the next pass when nothing asks for an earlier one

    def parse(self, raw: dict[str, Any]) -> Any: ...

    async def observe(self, key: Key, obj: Any) -> Any: ...

    def plan(self, key: Key, obj: Any, observed: Any) -> PlanLike: ...

    async def act(self, obj: Any, plan: Any, logger: Logger) -> dict[str, Any] | None:
        """Carry out the plan; returns the object if an action rewrote it."""
        ...

    def record(self, key: Key, obj: Any, plan: Any, observed: Any) -> float:
        """Record metrics; returns the seconds until the next pass."""
        ...

    def forget(self, key: Key) -> None: ...


Logger = logging.Logger | logging.LoggerAdapter[Any]


class ObjectLog(logging.LoggerAdapter[logging.Logger]):
    """The operator's lines about one object, prefixed like kopf's: "[namespace/name] ..."."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['key'] if self.extra else ''}] {msg}", kwargs


class Controller:
    """One kind's queue, cached bodies and own writes, and its pass."""

    def __init__(self, runtime: Runtime, kind: Kind) -> None:
        self.runtime = runtime
        self.kind = kind
        self.queue: WorkQueue[Key] = WorkQueue(runtime.clock)
        # The latest body of every object the watch delivered (slimmed).
        self.bodies: dict[Key, dict[str, Any]] = {}
        # Our own last write of each object (see own_writes).
        self.written = OwnWrites()
        self.log = logging.getLogger(f"coxswain.{kind.name.lower()}")

    def seen(self, key: Key, body: Mapping[str, Any]) -> None:
        """A watch event of the object itself: keep its body and queue it."""
        self.bodies[key] = slim_object(body)
        self.wake(key)

    def wake(self, key: Key) -> None:
        self.runtime.start_workers()
        self.queue.add(key)

    def forget(self, key: Key) -> None:
        self.queue.forget(key)
        self.bodies.pop(key, None)
        self.written.forget(key)
        self.kind.forget(key)

    async def process(self, key: Key) -> float | None:
        """One pass of one object; returns the seconds until its next pass (None: none)."""
        body = self.bodies.get(key)
        if body is None:
            return None  # deleted, or its children came before its own watch event
        logger = ObjectLog(self.log, {"key": f"{key[0]}/{key[1]}"})
        started = time.monotonic()
        try:
            delay = await self.reconcile(key, body, logger)
        except ValidationError as exc:
            # The API server's schema should make this impossible; say so rather than loop.
            metrics.RECONCILE_ERRORS.labels(self.kind.name).inc()
            logger.error(
                "this %s does not parse (is the CRD older than the operator?): %s", self.kind.name, exc
            )
            return None  # a change of the object queues it again
        except ApiError as exc:
            if is_namespace_terminating(exc):
                # Its objects go with the namespace; the deletion events end the story.
                logger.info("namespace %s is being deleted: not recreating anything in it", key[0])
                return None
            metrics.RECONCILE_ERRORS.labels(self.kind.name).inc()
            delay = self.queue.failed(key)
            logger.warning("reconcile failed, retrying in %.1f s: %s", delay, exc.status.message)
            return delay
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            metrics.RECONCILE_ERRORS.labels(self.kind.name).inc()
            delay = self.queue.failed(key)
            logger.warning(
                "cannot reach the API server (%s: %s), retrying in %.1f s", type(exc).__name__, exc, delay
            )
            return delay
        finally:
            metrics.RECONCILE_DURATION.labels(self.kind.name).observe(time.monotonic() - started)
        return delay

    async def reconcile(self, key: Key, body: dict[str, Any], logger: Logger) -> float | None:
        kind, client = self.kind, self.runtime.client
        raw = self.written.freshest(body)
        meta = raw.get("metadata", {})
        if meta.get("deletionTimestamp"):
            await self._drop_legacy_finalizer(raw)
            return None  # children go by ownerReference garbage collection
        obj = kind.parse(raw)
        observed = await kind.observe(key, obj)
        plan = kind.plan(key, obj, observed)
        # The status is written before the actions: a restart or rollback is on record first.
        old_status = obj.status.to_dict() if obj.status else {}
        new_status = plan.status.to_dict()
        if new_status != old_status:
            # Nulls clear fields a merge patch would otherwise keep.
            cleared = {k: None for k in old_status if k not in new_status}
            self.written.remember(await patch_status(client, kind.resource, key, {**cleared, **new_status}))
        await self._drop_legacy_finalizer(raw)
        rewritten = await kind.act(obj, plan, logger)
        if rewritten is not None:
            self.written.remember(slim_object(rewritten))
        for event in plan.events:
            self.runtime.post_event(raw, event.type, event.reason, event.message)
        return kind.record(key, obj, plan, observed)

    async def _drop_legacy_finalizer(self, raw: dict[str, Any]) -> None:
        finalizers = raw.get("metadata", {}).get("finalizers") or []
        if LEGACY_FINALIZER not in finalizers:
            return
        meta = raw["metadata"]
        kept = [f for f in finalizers if f != LEGACY_FINALIZER]
        # JSON patch with a test: another writer's finalizer added meanwhile is never lost.
        ops = [
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "replace", "path": "/metadata/finalizers", "value": kept},
        ]
        updated = await self.runtime.client.patch(
            self.kind.resource, meta["name"], ops, namespace=meta.get("namespace"), patch_type=PatchType.JSON
        )
        self.written.remember(dict(updated))
        self.log.info(
            "[%s/%s] removed the finalizer %s older operators added: deleting it no longer waits for an "
            "operator",
            meta.get("namespace"),
            meta["name"],
            LEGACY_FINALIZER,
        )


async def patch_status(
    client: AsyncClient, resource: Any, key: Key, status: dict[str, Any]
) -> dict[str, Any]:
    """Merge-patch the status subresource; returns the object as stored now."""
    updated = await client.patch(
        resource.Status, key[1], {"status": status}, namespace=key[0], patch_type=PatchType.MERGE
    )
    return dict(updated)


@dataclass
class Runtime:
    client: AsyncClient
    http: httpx.AsyncClient
    leadership: Leadership = field(default_factory=Leadership.standalone)
    clock: Clock = field(default_factory=LoopClock)
    controllers: dict[str, Controller] = field(default_factory=dict)
    # kopf's indexes (live views), captured at start-up, by their function's name.
    indexes: dict[str, Mapping[Key, Any]] = field(default_factory=dict)
    # What specs may ask for (coxswain.tenancy); set at start-up from the operator's flags.
    tenancy: TenancyPolicy = field(default_factory=TenancyPolicy)
    # How Events reach the API server (kopf's queue; a test records them instead).
    post_event: Callable[[Mapping[str, Any], str, str, str], None] = events.post
    _context: contextvars.Context | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def create(cls, leadership: Leadership | None = None) -> Runtime:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        return cls(
            client=make_client(),
            http=httpx.AsyncClient(limits=limits),
            leadership=leadership or Leadership.standalone(),
        )

    @staticmethod
    def of(memo: kopf.Memo) -> Runtime:
        runtime: Runtime = memo["runtime"]
        return runtime

    def add(self, kind: Kind) -> Controller:
        controller = self.controllers[kind.name] = Controller(self, kind)
        return controller

    def index(self, name: str) -> Mapping[Key, Any]:
        return self.indexes.get(name, {})

    def start_workers(self) -> None:
        # Started from the first watch event's handler, not from the start-up handler: tasks
        # inherit the context they are created in, and kopf sets the context variables that
        # `kopf.event` needs (its Event queue) only for handlers of watched objects. The
        # context is kept for workers restarted later (leadership lost and regained).
        if self._context is not None:
            return
        self._context = contextvars.copy_context()
        self._context.run(self._start_all)
        self.leadership.on_lost(self._on_lost)

    def _start_all(self) -> None:
        for controller in self.controllers.values():
            controller.queue.start(controller.process, controller.kind.workers, gate=self.leadership.wait)

    def _on_lost(self) -> None:
        # Passes in flight are cut short (their keys are queued again): a replica that no
        # longer leads must not write. The new workers wait for the leadership.
        async def restart() -> None:
            for controller in self.controllers.values():
                await controller.queue.restart_workers(
                    controller.process, controller.kind.workers, gate=self.leadership.wait
                )

        assert self._context is not None
        self._tasks.append(self._context.run(asyncio.create_task, restart()))

    def run_leadership(self) -> None:
        self.background(self.leadership.run())

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (a loop: leadership, progress pulls) until the operator stops."""
        self._tasks.append(asyncio.create_task(work))

    async def leadership_gate(self) -> None:
        await self.leadership.wait()

    async def close(self) -> None:
        for controller in self.controllers.values():
            await controller.queue.stop()
        await self.leadership.release()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()
        await self.client.close()
