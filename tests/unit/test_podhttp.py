"""Pod answers are read with a byte cap and an overall deadline (issue 15).

A real HTTP server on loopback plays a hostile pod: one that streams without end, and one
that trickles a byte at a time so that no single read ever times out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from coxswain.modelservice import scrape
from coxswain.podhttp import get_bounded
from coxswain.trainingjob.progress import fetch_progress, progress_url

pytestmark = pytest.mark.unit

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> None:
    while (await reader.readline()) not in (b"\r\n", b""):
        pass


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """200 with no length, then bytes for as long as anyone reads."""
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    chunk = b'{"step": 1, "pad": "' + b"x" * 65536
    try:
        while True:
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A valid small answer, one byte every 50 ms: each read is quick, the whole never ends in time."""
    await _read_request(reader)
    body = b'{"step": 5, "state": "training"}' + b" " * 1000
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    try:
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def honest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    body = b'{"step": 7}'
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    writer.close()


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _pod(port_ip: str = "127.0.0.1") -> dict[str, object]:
    return {"status": {"podIP": port_ip, "phase": "Running"}, "metadata": {"name": "p"}}


async def test_an_endless_progress_body_is_dropped_at_the_cap(http: httpx.AsyncClient) -> None:
    server, port = await _serve(endless)
    async with server:
        assert await fetch_progress(http, progress_url(_pod(), port) or "") is None
        assert await get_bounded(http, f"http://127.0.0.1:{port}/", max_bytes=1 << 20, deadline=30) is None


async def test_a_trickled_body_is_dropped_at_the_deadline(http: httpx.AsyncClient) -> None:
    server, port = await _serve(trickle)
    async with server:
        # The body is small and each byte comes long before a per-read timeout: only the
        # overall deadline ends the read.
        assert await get_bounded(http, f"http://127.0.0.1:{port}/", max_bytes=1 << 20, deadline=0.5) is None


async def test_an_endless_metrics_body_leaves_the_pod_out_of_the_sample(http: httpx.AsyncClient) -> None:
    server, port = await _serve(endless)
    async with server:
        assert await scrape.scrape(http, [("p", "127.0.0.1")], port) == {}


async def test_an_honest_answer_is_read(http: httpx.AsyncClient) -> None:
    server, port = await _serve(honest)
    async with server:
        assert await fetch_progress(http, progress_url(_pod(), port) or "") == {"step": 7}
