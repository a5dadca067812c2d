"""The activator's HTTP side: hold a request until its ModelService has a ready pod, then
proxy it there; 503 with Retry-After when none is ready within the hold timeout.

Requests reach the activator only while the operator's EndpointSlice lists it under a
service's Service (no ready server pod); any that arrive just after a pod turned ready
are proxied at once. Bodies are read whole: the server caps them at 8 MiB anyway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import Counter

from coxswain.activator.backends import Address, Backends, Key
from coxswain.activator.hold import Hold
from coxswain.activator.routing import UnknownHost, modelservice_of
from coxswain.activator.watch import Waker

log = logging.getLogger("coxswain.activator")

# A pod listed as ready that refuses the connection (it just stopped), or a just-woken pod
# whose queue is full (429: it took nothing on): try again after this, within the hold time.
REFUSED_PAUSE_SECONDS = 0.2
OVERLOADED_PAUSE_SECONDS = 0.05
# What a server answers without having started on the request: safe to send again.
RETRY_CODES = frozenset({429})
# Failures before any byte of the request went out (refused, unreachable, connect timeout):
# safe to send again. A connection that breaks after the request was sent is not retried:
# the pod may have acted on it, so the client gets 502 and decides.
NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

REQUESTS = Counter(
    "coxswain_activator_requests",
    "Requests the activator answered, by the code it answered with",
    ["namespace", "modelservice", "code"],
)


@dataclass
class Activator:
    backends: Backends
    waker: Waker
    session: aiohttp.ClientSession
    hold_timeout: float
    clock: Callable[[], float] = time.monotonic

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            key = modelservice_of(request.host)
        except UnknownHost as exc:
            return web.json_response({"error": str(exc)}, status=404)
        body = await request.read()
        response = await self._hold_and_forward(key, request, body)
        REQUESTS.labels(*key, str(response.status)).inc()
        return response

    async def _hold_and_forward(self, key: Key, request: web.Request, body: bytes) -> web.StreamResponse:
        deadline = self.clock() + self.hold_timeout
        hold = Hold(self.backends, self.waker, key, deadline, self.clock)
        try:
            while True:
                address = await hold.address("http")
                if address is None:
                    return _unavailable(key, self.hold_timeout)
                try:
                    response = await self._forward(address, request, body)
                    # A burst held at zero lands on one cold pod at once: what its queue
                    # cannot take waits here instead of failing.
                    if response.status not in RETRY_CODES or self.clock() >= deadline:
                        return response
                    await asyncio.sleep(OVERLOADED_PAUSE_SECONDS)
                except NOT_SENT as exc:
                    log.info("[%s/%s] pod %s:%d refused (%s); trying again", *key, *address, exc)
                    if self.clock() >= deadline:
                        return _unavailable(key, self.hold_timeout)
                    await asyncio.sleep(REFUSED_PAUSE_SECONDS)
                except aiohttp.ClientConnectionError as exc:
                    log.warning("[%s/%s] pod %s:%d broke the connection (%s)", *key, *address, exc)
                    return _broken(key, address)
        finally:
            hold.end()

    async def _forward(self, address: Address, request: web.Request, body: bytes) -> web.Response:
        ip, port = address
        host = f"[{ip}]" if ":" in ip else ip
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = request.host
        async with self.session.request(
            request.method, f"http://{host}:{port}{request.rel_url}", headers=headers, data=body
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream.status, body=payload, headers=out)


def _unavailable(key: Key, timeout: float) -> web.Response:
    return web.json_response(
        {
            "error": f"ModelService {key[0]}/{key[1]} has no ready pod after {timeout:g} s "
            "(scaling up from zero); retry later"
        },
        status=503,
        headers={"Retry-After": str(max(1, math.ceil(timeout / 10)))},
    )


def _broken(key: Key, address: Address) -> web.Response:
    return web.json_response(
        {
            "error": f"a pod of ModelService {key[0]}/{key[1]} ({address[0]}:{address[1]}) closed the "
            "connection after the request was sent; not sent again, since it may have been processed"
        },
        status=502,
    )


def make_app(activator: Activator) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024 + 1024)
    app.router.add_route("*", "/{tail:.*}", activator.handle)
    return app


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
        auto_decompress=False,
    )
