"""Reading what a pod answers, with a byte cap and an overall deadline.

The operator asks training and server pods for /progress and /metrics. Their answers come
from code the operator does not control: a pod that streams gigabytes, or trickles one
byte a second (each byte resetting a per-read timeout), must not exhaust the operator's
memory or hold one of its tasks, because every tenant's reconciles run in that process.
So a body is read in chunks up to `max_bytes` and within `deadline` seconds in total; past
either limit the answer is dropped as if the pod had not answered.
"""

from __future__ import annotations

import asyncio

import httpx

# /progress is a small JSON document (~1 KB); a server's /metrics a few hundred series.
PROGRESS_MAX_BYTES = 64 * 1024
METRICS_MAX_BYTES = 1024 * 1024
CONNECT_TIMEOUT = 1.0


class TooLarge(Exception):
    """The body passed the byte cap."""


async def get_bounded(http: httpx.AsyncClient, url: str, *, max_bytes: int, deadline: float) -> bytes | None:
    """The body of a 200 answer, or None: any other status, an error, too large or too slow."""
    try:
        async with asyncio.timeout(deadline):
            return await _read(http, url, max_bytes, deadline)
    except (TimeoutError, TooLarge, httpx.HTTPError):
        return None


async def _read(http: httpx.AsyncClient, url: str, max_bytes: int, deadline: float) -> bytes | None:
    timeout = httpx.Timeout(deadline, connect=min(CONNECT_TIMEOUT, deadline))
    async with http.stream("GET", url, timeout=timeout) as response:
        if response.status_code != 200:
            return None
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise TooLarge(url)
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > max_bytes:
                raise TooLarge(url)
        return bytes(body)
