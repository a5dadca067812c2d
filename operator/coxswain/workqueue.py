"""An asyncio work queue in the style of controller-runtime's: keys, not events, get processed.

- A key is queued once however often it is added before a worker takes it (de-duplication).
- A key being processed is never handed to a second worker: adding it meanwhile marks it dirty,
  and `done` queues it again, so the change that came in during the pass is not lost.
- `add_after` keeps only the earliest pending timer of a key. A worker taking a key drops its
  timer: every pass asks afresh for the delay it needs (see `run`).
- `forget` drops a key's timer, pending re-queue and failure count (the object is gone).
- A pass that raises is retried after a per-key back-off: exponential in the key's failures
  in a row, with jitter so that keys failing together (the API server was away) do not come
  back together; one pass that does not raise resets it.
- Timers run on a `Clock` (coxswain.clock): tests step it instead of sleeping.

A fixed number of worker tasks serve any number of keys: memory grows by a few small entries
per key instead of a task, an event and kopf's daemon bookkeeping per object.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from coxswain.clock import Clock, LoopClock, Timer

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Seconds before retrying a key after its n-th failure in a row: base * 2^(n-1), capped,
    times a random factor in [1 - jitter, 1]."""

    base: float = 1.0
    cap: float = 120.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, failures: int) -> float:
        raw = min(self.base * 2 ** max(failures - 1, 0), self.cap)
        return float(raw * (1.0 - self.jitter * self.rng.random()))


class WorkQueue(Generic[K]):
    def __init__(self, clock: Clock | None = None, backoff: Backoff | None = None) -> None:
        self.clock: Clock = clock or LoopClock()
        self.backoff = backoff or Backoff()
        self._order: deque[K] = deque()  # may hold stale duplicates; `_queued` is the truth
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, Timer] = {}
        self._failures: dict[K, int] = {}
        self._failed_now: set[K] = set()  # keys whose pass in flight called `failed`
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

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
        when = self.clock.monotonic() + seconds
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = self.clock.call_at(when, lambda: self._fire(key))

    def failed(self, key: K) -> float:
        """Count a failed pass of `key`; returns the seconds to wait before its retry."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        self._failed_now.add(key)
        return self.backoff.delay(failures)

    def succeeded(self, key: K) -> None:
        self._failures.pop(key, None)

    def forget(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._dirty.discard(key)
        self._failures.pop(key, None)
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

        `gate` is awaited before taking each key (e.g. while another replica leads); keys
        stay queued meanwhile.
        """
        self._stopping = False
        for i in range(workers):
            self._tasks.append(asyncio.create_task(self._work(process, gate), name=f"workqueue worker {i}"))

    async def stop(self) -> None:
        self._stopping = True
        await self._cancel_workers()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    async def restart_workers(
        self,
        process: Callable[[K], Awaitable[float | None]],
        workers: int,
        gate: Callable[[], Awaitable[None]],
    ) -> None:
        """Cancel the passes in flight (their keys are queued again) and start fresh workers."""
        await self._cancel_workers()
        self.start(process, workers, gate)

    async def _cancel_workers(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _work(
        self, process: Callable[[K], Awaitable[float | None]], gate: Callable[[], Awaitable[None]] | None
    ) -> None:
        while True:
            if gate is not None:
                # Before taking a key: while held, keys stay queued (and counted as pending).
                await gate()
            key = await self.get()
            delay: float | None
            try:
                delay = await process(key)
            except asyncio.CancelledError:
                self._failed_now.discard(key)
                self.done(key)
                if not self._stopping:
                    self.add(key)  # cut short (leadership lost): whoever acts next redoes it
                raise
            except Exception:
                delay = self.failed(key)
                log.exception("processing %s failed; retrying in %.1f s", key, delay)
            if key in self._failed_now:
                self._failed_now.discard(key)
            else:
                self.succeeded(key)
            self.done(key)
            if delay is not None:
                self.add_after(key, delay)
