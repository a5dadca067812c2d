"""Rank 0's /progress is pulled on its own clock, off the reconcile path: a hung rank 0 holds
up only its own pull, and a changed answer queues a pass."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from coxswain.clock import ManualClock, settle
from coxswain.trainingjob.progress import ProgressPuller, progress_url

pytestmark = pytest.mark.unit

A = ("ns", "a")
B = ("ns", "b")


async def test_pulls_every_interval_and_wakes_only_on_change() -> None:
    clock = ManualClock()
    woken: list[tuple[str, str]] = []
    answers: dict[str, dict[str, Any] | None] = {"http://a": {"step": 1}, "http://b": None}

    async def fetch(http: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
        return answers.get(url)

    puller = ProgressPuller(httpx.AsyncClient(), clock, woken.append, interval=5.0, fetch=fetch)
    puller.want(A, "http://a")
    puller.want(B, "http://b")
    task = asyncio.create_task(puller.run())
    try:
        await settle()
        assert woken == []  # nothing before the first interval
        await clock.advance(5)
        assert woken == [A] and puller.latest(A) == {"step": 1}
        assert puller.latest(B) is None  # no answer: nothing to report, no pass
        await clock.advance(5)
        assert woken == [A]  # the same answer: no pass
        answers["http://a"] = {"step": 2}
        await clock.advance(5)
        assert woken == [A, A] and puller.latest(A) == {"step": 2}
        puller.want(A, None)  # the job stopped running: no more pulls, the last answer stays
        answers["http://a"] = {"step": 3}
        await clock.advance(5)
        assert woken == [A, A] and puller.latest(A) == {"step": 2}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_hung_rank_0_does_not_hold_up_the_others() -> None:
    clock = ManualClock()
    woken: list[tuple[str, str]] = []
    hung = asyncio.Event()

    async def fetch(http: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
        if url == "http://hung":
            await hung.wait()
            return None
        return {"step": 7}

    puller = ProgressPuller(httpx.AsyncClient(), clock, woken.append, fetch=fetch)
    puller.want(A, "http://hung")
    puller.want(B, "http://b")
    pull = asyncio.create_task(puller.pull_all())
    await settle()
    assert woken == [B]  # B's answer is in while A's rank 0 still hangs
    hung.set()
    await pull
    assert woken == [B] and puller.latest(A) is None


def test_only_a_running_rank_0_with_an_address_is_pulled() -> None:
    assert progress_url(None, 9090) is None
    assert progress_url({"status": {"phase": "Pending", "podIP": "10.1.0.5"}}, 9090) is None
    assert progress_url({"status": {"phase": "Running"}}, 9090) is None
    assert progress_url({"status": {"phase": "Running", "podIP": "10.1.0.5"}}, 9090) == (
        "http://10.1.0.5:9090/progress"
    )
