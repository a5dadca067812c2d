"""The work queue: de-duplication, per-key serialisation, earliest timer, forget, workers,
per-key back-off. Time is a ManualClock stepped by the tests; nothing sleeps."""

from __future__ import annotations

import asyncio
import random

import pytest

from coxswain.clock import ManualClock, settle
from coxswain.workqueue import Backoff, WorkQueue

pytestmark = pytest.mark.unit

Key = tuple[str, str]
A: Key = ("ns", "a")
B: Key = ("ns", "b")


async def next_key(queue: WorkQueue[Key]) -> Key | None:
    """The key `get` hands out right now, or None when nothing is queued (no waiting)."""
    task = asyncio.create_task(queue.get())
    await settle()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


def queue_with_clock() -> tuple[WorkQueue[Key], ManualClock]:
    clock = ManualClock()
    return WorkQueue(clock, Backoff(rng=random.Random(7))), clock


async def test_a_key_added_many_times_is_queued_once() -> None:
    queue, _ = queue_with_clock()
    for _ in range(5):
        queue.add(A)
    queue.add(B)
    assert len(queue) == 2
    assert await next_key(queue) == A
    assert await next_key(queue) == B
    assert await next_key(queue) is None


async def test_a_key_added_while_processed_is_requeued_when_done_not_handed_out_twice() -> None:
    queue, _ = queue_with_clock()
    queue.add(A)
    assert await next_key(queue) == A
    queue.add(A)
    queue.add(A)
    assert await next_key(queue) is None  # still being processed: no second worker gets it
    queue.done(A)
    assert await next_key(queue) == A
    queue.done(A)
    assert await next_key(queue) is None


async def test_done_without_new_adds_does_not_requeue() -> None:
    queue, _ = queue_with_clock()
    queue.add(A)
    await next_key(queue)
    queue.done(A)
    assert await next_key(queue) is None


async def test_add_after_keeps_only_the_earliest_timer() -> None:
    queue, clock = queue_with_clock()
    queue.add_after(A, 30)
    queue.add_after(A, 5)
    queue.add_after(A, 100)  # later than the pending one: ignored
    assert queue.pending_timers() == 1
    await clock.advance(4.9)
    assert await next_key(queue) is None
    await clock.advance(0.1)
    assert await next_key(queue) == A
    queue.done(A)
    assert queue.pending_timers() == 0
    await clock.advance(60)
    assert await next_key(queue) is None  # the 30 s timer was replaced, not kept


async def test_add_after_zero_adds_now() -> None:
    queue, _ = queue_with_clock()
    queue.add_after(A, 0)
    assert await next_key(queue) == A


async def test_taking_a_key_drops_its_timer() -> None:
    queue, clock = queue_with_clock()
    queue.add_after(A, 10)
    queue.add(A)
    assert await next_key(queue) == A
    queue.done(A)
    assert queue.pending_timers() == 0
    await clock.advance(20)
    assert await next_key(queue) is None


async def test_forget_drops_timer_queued_entry_and_dirty_mark() -> None:
    queue, clock = queue_with_clock()
    queue.add_after(A, 5)
    queue.add(B)
    queue.forget(A)
    queue.forget(B)
    assert len(queue) == 0 and queue.pending_timers() == 0
    await clock.advance(10)
    assert await next_key(queue) is None
    # forgotten while processed: the pass may finish, but is not queued again
    queue.add(A)
    await next_key(queue)
    queue.add(A)
    queue.forget(A)
    queue.done(A)
    assert await next_key(queue) is None
    # and a key can come back after being forgotten
    queue.add(A)
    assert await next_key(queue) == A


async def test_workers_never_process_a_key_twice_at_once_and_catch_up_on_adds() -> None:
    queue, _ = queue_with_clock()
    running: set[Key] = set()
    passes: dict[Key, int] = {A: 0, B: 0}
    release = asyncio.Event()
    overlap = False

    async def process(key: Key) -> float | None:
        nonlocal overlap
        overlap = overlap or key in running
        running.add(key)
        await release.wait()
        running.discard(key)
        passes[key] += 1
        return None

    queue.start(process, workers=4)
    try:
        queue.add(A)
        queue.add(B)
        await settle()
        assert running == {A, B}
        for _ in range(10):  # while both are processed: marked dirty, not handed to idle workers
            queue.add(A)
            queue.add(B)
            await settle()
        assert not overlap and len(queue) == 0
        release.set()
        await settle()
    finally:
        await queue.stop()
    assert not overlap
    # one pass each, and one more for the adds that came during it
    assert passes == {A: 2, B: 2}


async def test_worker_requeues_after_the_returned_delay() -> None:
    queue, clock = queue_with_clock()
    calls: list[Key] = []

    async def process(key: Key) -> float | None:
        calls.append(key)
        return 5.0 if len(calls) < 3 else None

    queue.start(process, workers=2)
    try:
        queue.add(A)
        await settle()
        assert calls == [A]
        await clock.advance(4.9)
        assert calls == [A]
        await clock.advance(0.1)
        assert calls == [A, A]
        await clock.advance(5)
        assert calls == [A, A, A]
        await clock.advance(60)
        assert calls == [A, A, A]  # the third pass asked for none
    finally:
        await queue.stop()


async def test_errors_back_off_per_key_with_jitter_and_a_success_resets() -> None:
    queue, clock = queue_with_clock()
    failing = {B}
    calls: list[Key] = []

    async def process(key: Key) -> float | None:
        calls.append(key)
        if key in failing:
            raise ConnectionRefusedError("the API server is away")
        return None

    queue.start(process, workers=2)
    try:
        queue.add(B)
        queue.add(A)
        await settle()
        assert calls.count(B) == 1 and calls.count(A) == 1  # the workers survive the error
        delays = []
        for _ in range(5):
            timer = queue._timers[B]
            delays.append(timer.when() - clock.monotonic())
            await clock.advance(delays[-1])
        assert calls.count(B) == 6
        # Exponential (base 1 s, doubling) with up to 50 % jitter, never more than the raw step.
        for n, delay in enumerate(delays):
            assert 0.5 * 2**n <= delay <= 2**n
        failing.clear()
        await clock.advance(queue._timers[B].when() - clock.monotonic())
        assert calls.count(B) == 7
        assert queue.pending_timers() == 0  # succeeded: no retry, and the count is reset
        failing.add(B)
        queue.add(B)
        await settle()
        assert queue._timers[B].when() - clock.monotonic() <= 1.0
    finally:
        await queue.stop()


def test_backoff_is_capped() -> None:
    backoff = Backoff(base=1, cap=30, jitter=0.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 6, 20)] == [1, 2, 4, 30, 30]


async def test_gate_holds_the_workers() -> None:
    queue, _ = queue_with_clock()
    gate_open = asyncio.Event()
    done: list[Key] = []

    async def process(key: Key) -> float | None:
        done.append(key)
        return None

    queue.start(process, workers=2, gate=gate_open.wait)
    try:
        queue.add(A)
        await settle()
        assert done == [] and len(queue) == 1  # still queued: counted as pending
        queue.add(A)  # de-duplicated while held
        gate_open.set()
        await settle()
        assert done == [A]
    finally:
        await queue.stop()


async def test_restarting_workers_requeues_the_passes_cut_short() -> None:
    queue, _ = queue_with_clock()
    gate_open = asyncio.Event()
    gate_open.set()
    started: list[Key] = []
    finished: list[Key] = []
    hold = asyncio.Event()

    async def process(key: Key) -> float | None:
        started.append(key)
        await hold.wait()
        finished.append(key)
        return None

    queue.start(process, workers=1, gate=gate_open.wait)
    try:
        queue.add(A)
        await settle()
        assert started == [A]
        gate_open.clear()  # leadership lost: the pass in flight is cut short, A waits again
        await queue.restart_workers(process, 1, gate_open.wait)
        await settle()
        assert finished == [] and started == [A]
        hold.set()
        gate_open.set()
        await settle()
        assert started == [A, A] and finished == [A]
    finally:
        await queue.stop()
