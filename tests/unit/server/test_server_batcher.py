"""The batcher with a numpy stand-in for the model: merging, splitting, limits, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from coxswain_server.batcher import Batcher
from coxswain_server.errors import InferenceFailed, Overloaded

pytestmark = pytest.mark.unit


class Doubler:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    def __call__(self, arrays: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        self.batches.append(len(arrays[0]))
        if self.fail:
            raise ValueError("boom")
        return [arrays[0] * 2]


def make(forward: Doubler, executor: ThreadPoolExecutor, **kw: Any) -> Batcher:
    options = {"max_batch_size": 8, "max_latency_s": 0.0, "max_queue_size": 100, "label": "v1"} | kw
    batcher = Batcher(forward, executor, **options)
    batcher.start()
    return batcher


async def test_requests_that_arrive_together_are_merged_and_split_back() -> None:
    forward = Doubler()
    with ThreadPoolExecutor(1) as executor:
        batcher = make(forward, executor, max_latency_s=0.05)
        inputs = [np.full((1 + i % 2, 3), i, dtype=np.float32) for i in range(6)]
        outputs = await asyncio.gather(*(batcher.submit([x], len(x)) for x in inputs))
        await batcher.close(1)
    for x, out in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(out[0], x * 2)
    assert sum(forward.batches) == 9
    assert max(forward.batches) <= 8
    assert len(forward.batches) == 2  # 9 rows, at most 8 per batch


async def test_with_no_latency_budget_same_turn_arrivals_still_ride_together() -> None:
    forward = Doubler()
    with ThreadPoolExecutor(1) as executor:
        batcher = make(forward, executor)
        await asyncio.gather(*(batcher.submit([np.ones((1, 2))], 1) for _ in range(4)))
        await batcher.close(1)
    assert forward.batches == [4]


async def test_full_queue_refuses_with_overloaded() -> None:
    forward = Doubler()
    with ThreadPoolExecutor(1) as executor:
        batcher = make(forward, executor, max_latency_s=10.0, max_batch_size=1000, max_queue_size=2)
        first = [asyncio.ensure_future(batcher.submit([np.ones((1, 2))], 1)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.submit([np.ones((1, 2))], 1)
        await batcher.close(5)  # closing runs what is queued without waiting out the latency budget
        assert all(f.done() and not f.exception() for f in first)


class Picky:
    """Doubles its input, but raises on any batch that holds a negative value."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, arrays: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        self.batches.append(len(arrays[0]))
        if (arrays[0] < 0).any():
            raise ValueError("secret detail: a negative value")
        return [arrays[0] * 2]


async def test_a_failing_batch_is_retried_request_by_request_so_only_the_bad_one_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    forward = Picky()
    with ThreadPoolExecutor(1) as executor:
        batcher = make(forward, executor, max_latency_s=0.05)
        values = [1.0, 2.0, -1.0, 3.0]
        results = await asyncio.gather(
            *(batcher.submit([np.full((1, 2), v)], 1) for v in values), return_exceptions=True
        )
        await batcher.close(1)
    assert forward.batches[0] == 4  # merged, failed, then one request at a time
    assert sorted(forward.batches[1:]) == [1, 1, 1, 1]
    for value, result in zip(values, results, strict=True):
        if value < 0:
            assert isinstance(result, InferenceFailed)
            assert "secret" not in result.message and "ValueError" not in result.message
            error_id = result.message.rsplit("error id ", 1)[1].split()[0].strip(";.)")
            logged = [r for r in caplog.records if error_id in r.getMessage()]
            assert logged and logged[0].exc_info is not None, "the log line with the id carries the traceback"
        else:
            assert not isinstance(result, BaseException)
            np.testing.assert_array_equal(result[0], np.full((1, 2), value * 2))


async def test_a_failing_batch_of_one_fails_it_and_the_batcher_goes_on() -> None:
    forward = Doubler(fail=True)
    with ThreadPoolExecutor(1) as executor:
        batcher = make(forward, executor)
        with pytest.raises(InferenceFailed, match="error id"):
            await batcher.submit([np.ones((1, 2))], 1)
        forward.fail = False
        out = await batcher.submit([np.ones((1, 2))], 1)
        np.testing.assert_array_equal(out[0], np.full((1, 2), 2.0))
        await batcher.close(1)


async def test_the_queue_is_bounded_in_rows_too() -> None:
    forward = Doubler()
    with ThreadPoolExecutor(1) as executor:
        batcher = make(forward, executor, max_latency_s=10.0, max_batch_size=64, max_queue_rows=40)
        first = [asyncio.ensure_future(batcher.submit([np.ones((16, 2))], 16)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match=r"32 rows queued.*40"):
            await batcher.submit([np.ones((16, 2))], 16)
        small = asyncio.ensure_future(batcher.submit([np.ones((8, 2))], 8))  # 40 rows: still fits
        await asyncio.sleep(0)
        await batcher.close(5)
        assert all(f.done() and not f.exception() for f in [*first, small])


async def test_a_burst_goes_when_arrivals_stop_not_at_the_latency_deadline() -> None:
    forward = Doubler()
    with ThreadPoolExecutor(1) as executor:
        batcher = make(forward, executor, max_latency_s=2.0, max_batch_size=1000)
        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(batcher.submit([np.ones((1, 2))], 1) for _ in range(30)))
        waited = asyncio.get_running_loop().time() - started
        await batcher.close(1)
    assert forward.batches == [30]
    assert waited < 0.5, f"a finished burst waited {waited:.2f}s for a batch that could not fill"


async def test_cheap_batches_run_inline_and_slow_ones_on_the_thread() -> None:
    import threading

    ran_on: list[str] = []

    def forward(arrays: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        ran_on.append(threading.current_thread().name)
        return [arrays[0]]

    with ThreadPoolExecutor(1, thread_name_prefix="inference") as executor:
        batcher = Batcher(
            forward,
            executor,
            max_batch_size=8,
            max_latency_s=0.0,
            max_queue_size=10,
            label="v1",
            inline_below_s=1.0,
        )
        batcher.start()
        for _ in range(3):
            await batcher.submit([np.ones((1, 2))], 1)
        await batcher.close(1)
        assert ran_on[0].startswith("inference")  # not measured yet: the thread
        assert ran_on[1:] == [threading.current_thread().name] * 2  # measured cheap: inline
        ran_on.clear()
        slow = Batcher(
            forward,
            executor,
            max_batch_size=8,
            max_latency_s=0.0,
            max_queue_size=10,
            label="v2",
            inline_below_s=0.0,
        )
        slow.start()
        for _ in range(2):
            await slow.submit([np.ones((1, 2))], 1)
        await slow.close(1)
        assert all(name.startswith("inference") for name in ran_on)
