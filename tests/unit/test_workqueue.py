"""The work queue: de-duplication, per-key serialisation, earliest timer, forget, workers."""

from __future__ import annotations

import asyncio

import pytest

from coxswain.workqueue import WorkQueue

pytestmark = pytest.mark.unit

Key = tuple[str, str]
A: Key = ("ns", "a")
B: Key = ("ns", "b")


async def next_key(queue: WorkQueue[Key], within: float = 1.0) -> Key:
    return await asyncio.wait_for(queue.get(), within)


async def nothing_queued(queue: WorkQueue[Key], wait: float = 0.05) -> bool:
    try:
        await asyncio.wait_for(queue.get(), wait)
    except TimeoutError:
        return True
    return False


async def test_a_key_added_many_times_is_queued_once() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    for _ in range(5):
        queue.add(A)
    queue.add(B)
    assert len(queue) == 2
    assert await next_key(queue) == A
    assert await next_key(queue) == B
    assert await nothing_queued(queue)


async def test_a_key_added_while_processed_is_requeued_when_done_not_handed_out_twice() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    queue.add(A)
    assert await next_key(queue) == A
    queue.add(A)
    queue.add(A)
    assert await nothing_queued(queue)  # still being processed: no second worker gets it
    queue.done(A)
    assert await next_key(queue) == A
    queue.done(A)
    assert await nothing_queued(queue)


async def test_done_without_new_adds_does_not_requeue() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    queue.add(A)
    await next_key(queue)
    queue.done(A)
    assert await nothing_queued(queue)


async def test_add_after_keeps_only_the_earliest_timer() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    queue.add_after(A, 0.3)
    queue.add_after(A, 0.05)
    queue.add_after(A, 10)  # later than the pending one: ignored
    assert queue.pending_timers() == 1
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await next_key(queue) == A
    assert loop.time() - start < 0.25
    queue.done(A)
    assert queue.pending_timers() == 0
    assert await nothing_queued(queue, 0.4)  # the 0.3 s timer was replaced, not kept


async def test_add_after_zero_adds_now() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    queue.add_after(A, 0)
    assert await next_key(queue, 0.1) == A


async def test_taking_a_key_drops_its_timer() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    queue.add_after(A, 0.1)
    queue.add(A)
    assert await next_key(queue) == A
    queue.done(A)
    assert queue.pending_timers() == 0
    assert await nothing_queued(queue, 0.2)


async def test_forget_drops_timer_queued_entry_and_dirty_mark() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    queue.add_after(A, 0.05)
    queue.add(B)
    queue.forget(A)
    queue.forget(B)
    assert len(queue) == 0 and queue.pending_timers() == 0
    assert await nothing_queued(queue, 0.1)
    # forgotten while processed: the pass may finish, but is not queued again
    queue.add(A)
    await next_key(queue)
    queue.add(A)
    queue.forget(A)
    queue.done(A)
    assert await nothing_queued(queue)
    # and a key can come back after being forgotten
    queue.add(A)
    assert await next_key(queue) == A


async def test_workers_never_process_a_key_twice_at_once_and_catch_up_on_adds() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    running: set[Key] = set()
    passes: dict[Key, int] = {A: 0, B: 0}
    overlap = False

    async def process(key: Key) -> float | None:
        nonlocal overlap
        overlap = overlap or key in running
        running.add(key)
        await asyncio.sleep(0.02)
        running.discard(key)
        passes[key] += 1
        return None

    queue.start(process, workers=4)
    try:
        for _ in range(10):
            queue.add(A)
            queue.add(B)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
    finally:
        await queue.stop()
    assert not overlap
    # far fewer passes than adds (de-duplicated), at least one after the last add
    assert 2 <= passes[A] <= 6 and 2 <= passes[B] <= 6


async def test_worker_requeues_after_the_returned_delay_and_survives_errors() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    calls: list[Key] = []

    async def process(key: Key) -> float | None:
        calls.append(key)
        if key == B:
            raise RuntimeError("boom")
        return 0.05 if len(calls) < 3 else None

    queue.start(process, workers=2)
    try:
        queue.add(A)
        await asyncio.sleep(0.3)
        assert calls.count(A) == 3  # first pass, then twice after 0.05 s, then no more
        queue.add(B)
        await asyncio.sleep(0.05)
        assert B in calls and queue.pending_timers() == 1  # retried later
        queue.add(A)
        await asyncio.sleep(0.05)
        assert calls.count(A) == 4  # the workers survived the error
    finally:
        await queue.stop()


async def test_gate_holds_the_workers() -> None:
    queue: WorkQueue[Key] = WorkQueue()
    gate_open = asyncio.Event()
    done: list[Key] = []

    async def process(key: Key) -> float | None:
        done.append(key)
        return None

    queue.start(process, workers=2, gate=gate_open.wait)
    try:
        queue.add(A)
        await asyncio.sleep(0.05)
        assert done == []
        queue.add(A)  # dirty while held
        gate_open.set()
        await asyncio.sleep(0.05)
        assert done == [A, A]
    finally:
        await queue.stop()
