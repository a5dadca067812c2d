"""The activator's proxy against a real upstream HTTP server on loopback: a request held
until the first pod is ready, a cold pod's 429 retried, the hold timeout answered 503 with
Retry-After. The EndpointSlice watch is replaced by feeding `Backends` the slices it would
see; the wake-up is recorded instead of patching a cluster (tests/e2e covers both for real)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from activator_doubles import RecordingWaker, ready_slice
from aiohttp import web

from coxswain.activator.backends import Backends
from coxswain.activator.proxy import Activator, make_app, new_session

pytestmark = pytest.mark.unit

HOST = "digits.ml.svc.cluster.local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, list[int]]]:
    """A server whose first answer is 429 (a full queue), then 200 with the body echoed."""
    answers: list[int] = []

    async def infer(request: web.Request) -> web.Response:
        code = 429 if not answers else 200
        answers.append(code)
        body = await request.read()
        return web.Response(status=code, body=body, headers={"X-Host": request.host})

    app = web.Application()
    app.router.add_post("/v2/models/digits/infer", infer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield port, answers
    await runner.cleanup()


async def serve(activator: Activator) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(activator))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_a_held_request_is_answered_once_a_pod_is_ready(upstream: tuple[int, list[int]]) -> None:
    port, answers = upstream
    backends, waker = Backends(), RecordingWaker()
    session = new_session()
    runner, own = await serve(Activator(backends, waker, session, hold_timeout=30))  # type: ignore[arg-type]
    try:
        async with aiohttp.ClientSession() as client:
            call = asyncio.create_task(
                client.post(
                    f"http://127.0.0.1:{own}/v2/models/digits/infer", data=b"x" * 10, headers={"Host": HOST}
                )
            )
            await asyncio.wait_for(waker.asked.wait(), 10)
            assert waker.keys[0] == ("ml", "digits") and not call.done()
            backends.update(ready_slice(http=port))
            response = await asyncio.wait_for(call, 10)
            assert response.status == 200 and await response.read() == b"x" * 10
            assert response.headers["X-Host"] == HOST
            assert answers == [429, 200]  # the cold pod's 429 was retried, not passed on
    finally:
        await runner.cleanup()
        await session.close()


async def test_no_ready_pod_within_the_hold_timeout_is_503_with_retry_after() -> None:
    session = new_session()
    runner, own = await serve(Activator(Backends(), RecordingWaker(), session, hold_timeout=0.3))  # type: ignore[arg-type]
    try:
        async with aiohttp.ClientSession() as client:
            r = await client.get(f"http://127.0.0.1:{own}/v2/models/digits", headers={"Host": HOST})
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            assert "ml/digits has no ready pod" in (await r.json())["error"]
            r = await client.get(f"http://127.0.0.1:{own}/v2/models/digits", headers={"Host": "digits"})
            assert r.status == 404 and "<name>.<namespace>" in (await r.json())["error"]
    finally:
        await runner.cleanup()
        await session.close()


async def test_a_refused_connection_is_tried_again_until_a_pod_answers(
    upstream: tuple[int, list[int]],
) -> None:
    port, answers = upstream
    backends = Backends()
    backends.update(ready_slice(http=free_port()))  # listed as ready, nothing listening: refused
    session = new_session()
    runner, own = await serve(Activator(backends, RecordingWaker(), session, hold_timeout=30))  # type: ignore[arg-type]
    refused = asyncio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "refused" in record.getMessage():
                refused.set()

    seen, logger = Seen(), logging.getLogger("coxswain.activator")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(seen)
    try:
        async with aiohttp.ClientSession() as client:
            call = asyncio.create_task(
                client.post(
                    f"http://127.0.0.1:{own}/v2/models/digits/infer", data=b"y", headers={"Host": HOST}
                )
            )
            await asyncio.wait_for(refused.wait(), 10)
            backends.update(ready_slice(http=port))  # the same slice, now on a listening pod
            response = await asyncio.wait_for(call, 10)
            assert response.status == 200 and await response.read() == b"y"
            assert answers == [429, 200]
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
        await runner.cleanup()
        await session.close()


async def test_a_connection_broken_after_sending_is_502_and_not_sent_again() -> None:
    received: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()  # took the request, answered nothing

    pod = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    backends = Backends()
    backends.update(ready_slice(http=pod.sockets[0].getsockname()[1]))
    session = new_session()
    runner, own = await serve(Activator(backends, RecordingWaker(), session, hold_timeout=30))  # type: ignore[arg-type]
    try:
        async with aiohttp.ClientSession() as client:
            r = await client.post(
                f"http://127.0.0.1:{own}/v2/models/digits/infer", data=b"z", headers={"Host": HOST}
            )
            assert r.status == 502 and "not sent again" in (await r.json())["error"]
        assert len(received) == 1
    finally:
        await runner.cleanup()
        await session.close()
        pod.close()
        await pod.wait_closed()
