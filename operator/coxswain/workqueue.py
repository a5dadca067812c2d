"""An asyncio work queue in the style of controller-runtime's: keys, not events, get processed.

- A key is queued once however often it is added before a worker takes it (de-duplication).
- A key being processed is never handed to a second worker: adding it meanwhile marks it dirty,
  and `done` queues it again, so the change that came in during the pass is not lost.
- `add_after` keeps only the earliest pending timer of a key. A worker taking a key drops its
  timer: every pass asks afresh for the delay it needs (see `run`).
- `forget` drops a key's timer and pending re-queue (the object is gone).

A fixed number of worker tasks serve any number of keys: memory grows by a few small entries
per key instead of a task, an event and kopf's daemon bookkeeping per object.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)

ERROR_BACKOFF = 5.0  # seconds before retrying a key whose pass raised unexpectedly


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._order: deque[K] = deque()  # may hold stale duplicates; `_queued` is the truth
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        """Keys waiting for a worker (not those being processed or waiting on a timer)."""
        return len(self._queued)

    def pending_timers(self) -> int:
        return len(self._timers)

    def add(self, key: K) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._order.append(key)
        self._notify()

    def add_after(self, key: K, seconds: float) -> None:
        if seconds <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + seconds
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def forget(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._dirty.discard(key)
        self._queued.discard(key)  # its stale entry in `_order` is skipped by `get`

    async def get(self) -> K:
        """Wait for a key and mark it as being processed; call `done` with it afterwards."""
        while True:
            while self._order:
                key = self._order.popleft()
                if key not in self._queued:
                    continue  # forgotten, or a duplicate of one taken already
                self._queued.discard(key)
                self._processing.add(key)
                timer = self._timers.pop(key, None)
                if timer is not None:
                    timer.cancel()
                return key
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._notify()  # pass the wake-up on: a key is waiting
                raise

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _notify(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # --- workers -------------------------------------------------------------------------

    def start(
        self,
        process: Callable[[K], Awaitable[float | None]],
        workers: int,
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Start `workers` tasks; `process(key)` returns seconds until its next pass (None: none).

        `gate` is awaited after taking a key and before processing it (e.g. while the operator
        is paused by peering); the key stays marked as processing meanwhile.
        """
        for i in range(workers):
            self._tasks.append(asyncio.create_task(self._work(process, gate), name=f"workqueue worker {i}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    async def _work(
        self, process: Callable[[K], Awaitable[float | None]], gate: Callable[[], Awaitable[None]] | None
    ) -> None:
        while True:
            key = await self.get()
            delay: float | None
            try:
                if gate is not None:
                    await gate()
                delay = await process(key)
            except asyncio.CancelledError:
                self.done(key)
                raise
            except Exception:
                log.exception("processing %s failed; retrying in %.0f s", key, ERROR_BACKOFF)
                delay = ERROR_BACKOFF
            self.done(key)
            if delay is not None:
                self.add_after(key, delay)
