"""What the operator's handlers share, made once at start-up and kept in kopf's memo."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import kopf
from lightkube import AsyncClient

from coxswain.kube import make_client
from coxswain.own_writes import OwnWrites
from coxswain.workqueue import WorkQueue

Key = tuple[str, str]  # (namespace, name)


@dataclass
class Runtime:
    client: AsyncClient
    http: httpx.AsyncClient
    # TrainingJobs to reconcile, served by a few workers (see trainingjob.controller).
    queue: WorkQueue[Key] = field(default_factory=WorkQueue)
    # The latest body of every TrainingJob the watch delivered (slimmed), and when it came.
    bodies: dict[Key, tuple[dict[str, Any], float]] = field(default_factory=dict)
    # kopf's indexes of the jobs' batch Jobs and pods, captured at start-up (live views).
    indexes: dict[str, Mapping[Key, Any]] = field(default_factory=dict)
    # kopf's "operator paused" toggle set (peering), when it could be captured; see startup.
    paused: Any = None
    # loop.time() of the last end of a pause: bodies delivered before it may be stale.
    resumed_at: float = 0.0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _process: Callable[[Key], Awaitable[float | None]] | None = None
    _workers: int = 0
    # Our own last status write of each TrainingJob (see own_writes).
    written: OwnWrites = field(default_factory=OwnWrites)

    @classmethod
    def create(cls) -> Runtime:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        return cls(client=make_client(), http=httpx.AsyncClient(limits=limits))

    @staticmethod
    def of(memo: kopf.Memo) -> Runtime:
        runtime: Runtime = memo["runtime"]
        return runtime

    def wake(self, namespace: str, name: str) -> None:
        """Queue a TrainingJob for a pass (called from kopf handlers, on the event loop)."""
        if self._process is not None:
            self._start_workers()
        self.queue.add((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        self.queue.forget((namespace, name))
        self.bodies.pop((namespace, name), None)
        self.written.forget((namespace, name))

    async def unpaused(self) -> None:
        """Return once kopf's peering does not hold this replica paused (at once if unknown)."""
        if self.paused is not None and self.paused.is_on():
            await self.paused.wait_for(False)

    def start(self, process: Callable[[Key], Awaitable[float | None]], workers: int) -> None:
        """Serve the queue with `workers` tasks, started by the first `wake` (see there)."""
        self._process, self._workers = process, workers
        self._tasks.append(asyncio.create_task(self.watch_pauses(), name="coxswain pause watcher"))

    def _start_workers(self) -> None:
        # Started from the first watch event's handler, not from the start-up handler: tasks
        # inherit the context they are created in, and kopf sets the context variables that
        # `kopf.event` needs (its Event queue) only for handlers of watched objects.
        if self._process is not None:
            self.queue.start(self._process, self._workers, gate=self.unpaused)
            self._process = None

    async def watch_pauses(self) -> None:
        """Note the end of every pause: what was seen before it may be stale (another replica acted)."""
        if self.paused is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            await self.paused.wait_for(True)
            await self.paused.wait_for(False)
            self.resumed_at = loop.time()

    async def close(self) -> None:
        await self.queue.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()
        await self.client.close()
