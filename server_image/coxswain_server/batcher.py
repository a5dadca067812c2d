"""Dynamic batching: requests for one version queue here, are merged into one batch of up
to `max_batch_size` rows (or whatever arrived within `max_latency`, whichever comes first),
run on the inference thread, and the output rows are handed back to each caller.

The model runs on the inference thread: while one batch runs there, the loop parses the next
requests, so batches fill by themselves under load. The exception is a model whose batches
take less than `inline_below` (measured, smoothed): handing such a batch to a thread and back
costs more than running it (two thread wake-ups, each a wait for a CPU on a busy node), and
blocking the loop for that long delays it no more than parsing one large request would. A
batch that gets slower than the bound goes back to the thread. With `max_latency` 0
the worker still yields one loop turn before taking a batch, so requests that arrived in
the same turn ride together at no added latency. With `max_latency` above 0, a batch that
is not full also goes as soon as requests stop arriving (no arrival for twice the smoothed
gap between arrivals): under a steady stream it would otherwise always wait the full
`max_latency` for rows that are still with the clients, which costs latency and, in a
closed loop, throughput.

A batch that fails is run again request by request, so a request the model cannot take
fails alone instead of taking its batch-mates with it. The failing request's client gets a
generic message with an error id; the exception and its traceback go to the log line that
carries the same id (exception text can hold model internals or other clients' data).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
import numpy.typing as npt

from coxswain_server.errors import InferenceFailed, NotReady, Overloaded

log = logging.getLogger("coxswain_server.batcher")

# Shortest "no new request" pause that ends a wait for the batch to fill: one loop turn
# under load is tens of microseconds, so less than this is not yet a pause.
MIN_QUIET_S = 100e-6

Arrays = list[npt.NDArray[Any]]
Forward = Callable[[Sequence[npt.NDArray[Any]]], Arrays]


class _Pending:
    __slots__ = ("arrays", "future", "rows", "since")

    def __init__(self, arrays: Arrays, rows: int, future: asyncio.Future[Arrays], since: float) -> None:
        self.arrays = arrays
        self.rows = rows
        self.future = future
        self.since = since


class Batcher:
    def __init__(
        self,
        forward: Forward,
        executor: Executor,
        *,
        max_batch_size: int,
        max_latency_s: float,
        max_queue_size: int,
        label: str,
        max_queue_rows: int | None = None,
        inline_below_s: float = 0.0,
        observe_batch: Callable[[int], None] | None = None,
        count_error: Callable[[], None] | None = None,
    ) -> None:
        self._forward = forward
        self._executor = executor
        self._max_rows = max_batch_size
        self._max_latency = max_latency_s
        self._max_queue = max_queue_size
        self._max_queue_rows = max_queue_rows if max_queue_rows is not None else 32 * max_batch_size
        self._label = label
        self._observe_batch = observe_batch
        self._count_error = count_error
        self._queue: collections.deque[_Pending] = collections.deque()
        self._inline_below = inline_below_s
        self._cost: float | None = None  # smoothed seconds per forward, measured on every batch
        self._last_arrival = 0.0
        self._gap = max_latency_s  # until measured, assume arrivals are sparse
        self._queued_rows = 0
        self._wake: asyncio.Future[None] | None = None
        self._running = 0  # requests in the batch now on the inference thread
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._work(), name=f"batcher-{self._label}")

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        """Requests queued or running: what must finish before this version can go."""
        return len(self._queue) + self._running

    async def submit(self, arrays: Arrays, rows: int) -> Arrays:
        """Queue one request's inputs (`rows` items); returns its output rows."""
        if self._closing:
            raise NotReady(f"version {self._label} is being unloaded; retry (unversioned calls go elsewhere)")
        if len(self._queue) >= self._max_queue:
            raise Overloaded(
                f"version {self._label} has {len(self._queue)} requests queued (max {self._max_queue}); retry later"
            )
        # rows, not only requests, bound what waits in memory; an empty queue takes any
        # request (each is at most one batch, the per-request row cap)
        if self._queue and self._queued_rows + rows > self._max_queue_rows:
            raise Overloaded(
                f"version {self._label} has {self._queued_rows} rows queued (max {self._max_queue_rows} rows, "
                "--max-queue-rows); retry later"
            )
        assert self._loop is not None, "Batcher.start() was not called"
        future: asyncio.Future[Arrays] = self._loop.create_future()
        now = time.monotonic()
        # smoothed gap between arrivals: tells the worker when a burst of requests is over
        self._gap = 0.8 * self._gap + 0.2 * min(now - self._last_arrival, 1.0)
        self._last_arrival = now
        self._queue.append(_Pending(arrays, rows, future, now))
        self._queued_rows += rows
        wake = self._wake
        if (
            wake is not None
            and not wake.done()
            and (self._max_latency == 0 or self._queued_rows >= self._max_rows or len(self._queue) == 1)
        ):
            wake.set_result(None)
        return await future

    async def _sleep_until_woken(self, delay: float | None) -> None:
        assert self._loop is not None
        self._wake = self._loop.create_future()
        handle = self._loop.call_later(delay, _resolve, self._wake) if delay is not None else None
        try:
            await self._wake
        finally:
            self._wake = None
            if handle is not None:
                handle.cancel()

    async def _work(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._sleep_until_woken(None)
                continue
            if self._max_latency > 0:
                # Wait for the batch to fill, at most max_latency after its first request, and
                # no longer than requests keep coming: once no request has arrived for twice
                # the usual gap between arrivals, the burst is over and waiting only adds latency.
                while self._queued_rows < self._max_rows and self._queue and not self._closing:
                    now = time.monotonic()
                    left = self._queue[0].since + self._max_latency - now
                    quiet = self._last_arrival + max(2.0 * self._gap, MIN_QUIET_S) - now
                    if left <= 0 or quiet <= 0:
                        break
                    await self._sleep_until_woken(min(left, quiet))
            else:
                await asyncio.sleep(0)  # let requests parsed in this loop turn join
            batch = self._take()
            if batch:
                await self._run(batch)

    def _timed_forward(self, arrays: Arrays) -> Arrays:
        started = time.perf_counter()
        outputs = self._forward(arrays)
        spent = time.perf_counter() - started
        self._cost = spent if self._cost is None else 0.8 * self._cost + 0.2 * spent
        return outputs

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        queue = self._queue
        while queue and (not batch or rows + queue[0].rows <= self._max_rows):
            item = queue.popleft()
            self._queued_rows -= item.rows
            if item.future.done():  # the caller went away (cancelled); skip its work
                continue
            batch.append(item)
            rows += item.rows
        return batch

    async def _call(self, arrays: Arrays) -> Arrays:
        """One forward: inline when measured cheap, else on the inference thread."""
        cost = self._cost
        if cost is not None and cost < self._inline_below:
            return self._timed_forward(arrays)
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, self._timed_forward, arrays)

    async def _run(self, batch: list[_Pending]) -> None:
        n_inputs = len(batch[0].arrays)
        if len(batch) == 1:
            arrays = batch[0].arrays
        else:
            arrays = [np.concatenate([item.arrays[i] for item in batch]) for i in range(n_inputs)]
        rows = sum(item.rows for item in batch)
        self._running = len(batch)
        try:
            try:
                outputs = await self._call(arrays)
            except Exception as exc:
                if len(batch) == 1:
                    self._fail(batch[0], exc)
                else:
                    log.warning(
                        "version %s: a batch of %d requests (%d rows) failed in the model (%s); "
                        "running them one by one so only the request at fault fails",
                        self._label, len(batch), rows, type(exc).__name__,
                    )  # fmt: skip
                    await self._run_alone(batch)
                return
        finally:
            self._running = 0
        if self._observe_batch is not None:
            self._observe_batch(rows)
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        start = 0
        for item in batch:
            end = start + item.rows
            if not item.future.done():
                item.future.set_result([out[start:end] for out in outputs])
            start = end

    async def _run_alone(self, batch: list[_Pending]) -> None:
        for item in batch:
            if item.future.done():  # the caller went away meanwhile
                continue
            try:
                outputs = await self._call(item.arrays)
            except Exception as exc:
                self._fail(item, exc)
                continue
            if self._observe_batch is not None:
                self._observe_batch(item.rows)
            if not item.future.done():
                item.future.set_result(outputs)

    def _fail(self, item: _Pending, exc: Exception) -> None:
        error_id = secrets.token_hex(6)
        log.error(
            "error id %s: version %s: the model failed on a request of %d rows: %s: %s",
            error_id, self._label, item.rows, type(exc).__name__, exc, exc_info=exc,
        )  # fmt: skip
        if self._count_error is not None:
            self._count_error()
        if not item.future.done():
            item.future.set_exception(
                InferenceFailed(
                    f"the model failed on this request; error id {error_id} (the server log has the details)"
                )
            )

    async def close(self, grace_seconds: float) -> None:
        """Refuse new work, let queued and running batches finish (up to `grace_seconds`), stop."""
        self._closing = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
        except TimeoutError:
            log.warning(
                "version %s: %d requests still queued after %.0fs; cancelling them",
                self._label,
                self.busy,
                grace_seconds,
            )
            self._task.cancel()
            for item in self._queue:
                if not item.future.done():
                    item.future.set_exception(
                        NotReady(f"version {self._label} was unloaded before this request ran")
                    )
            self._queue.clear()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
