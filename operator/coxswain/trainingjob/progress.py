"""Rank 0's /progress, pulled on its own schedule, off the reconcile path.

Training pods hold no API credentials, so the operator pulls what rank 0 reports. A pass only
says which pod to pull (`want`) and reads the latest answer (`latest`); a loop pulls every
running job's rank 0 every `interval` seconds, all at once with a bound on concurrency, and
queues a pass for a job whose answer changed. A slow or hung rank 0 costs its own pull's
timeout and never delays a pass of any job.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from coxswain.clock import Clock
from coxswain.podhttp import PROGRESS_MAX_BYTES, get_bounded

Key = tuple[str, str]

# Overall time for rank 0's answer, body included: a pod that trickles or streams without end
# costs one bounded read (podhttp), never the operator's memory.
PROGRESS_DEADLINE = 2.0


async def fetch_progress(http: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    """The document at `url`, or None when it does not answer (starting, kwok pod, network),
    answers too much or too slowly."""
    body = await get_bounded(http, url, max_bytes=PROGRESS_MAX_BYTES, deadline=PROGRESS_DEADLINE)
    if body is None:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def progress_url(pod: dict[str, Any] | None, port: int) -> str | None:
    """Where rank 0 answers, once it runs and has an address."""
    if pod is None:
        return None
    status = pod.get("status", {})
    ip = status.get("podIP")
    if not ip or status.get("phase") != "Running":
        return None
    return f"http://{ip}:{port}/progress"


class ProgressPuller:
    def __init__(
        self,
        http: httpx.AsyncClient,
        clock: Clock,
        wake: Callable[[Key], None],
        interval: float = 5.0,
        concurrency: int = 32,
        fetch: Callable[[httpx.AsyncClient, str], Awaitable[dict[str, Any] | None]] = fetch_progress,
    ) -> None:
        self.http, self.clock, self.wake, self.interval = http, clock, wake, interval
        self._fetch = fetch
        self._limit = asyncio.Semaphore(concurrency)
        self._targets: dict[Key, str] = {}
        self._latest: dict[Key, dict[str, Any]] = {}

    def want(self, key: Key, url: str | None) -> None:
        """Pull `url` for `key` from now on (None: stop pulling, keep the last answer)."""
        if url is None:
            self._targets.pop(key, None)
            return
        if self._targets.get(key) not in (None, url):
            self._latest.pop(key, None)  # another pod (a new attempt): the old answer is not its
        self._targets[key] = url

    def latest(self, key: Key) -> dict[str, Any] | None:
        return self._latest.get(key)

    def forget(self, key: Key) -> None:
        self._targets.pop(key, None)
        self._latest.pop(key, None)

    def __len__(self) -> int:
        return len(self._targets)

    async def run(self, gate: Callable[[], Awaitable[None]] | None = None) -> None:
        """Pull every `interval` seconds until cancelled (waiting on `gate`, e.g. leadership)."""
        while True:
            await self.clock.sleep(self.interval)
            if gate is not None:
                await gate()
            await self.pull_all()

    async def pull_all(self) -> None:
        await asyncio.gather(*(self._pull(key, url) for key, url in list(self._targets.items())))

    async def _pull(self, key: Key, url: str) -> None:
        async with self._limit:
            doc = await self._fetch(self.http, url)
        if doc is None or self._targets.get(key) != url:
            return  # no answer (the last one stays), or the job moved on meanwhile
        if doc != self._latest.get(key):
            self._latest[key] = doc
            self.wake(key)
