"""The activator's gRPC side: hold a connection until its ModelService has a ready pod, then
splice it there; a trailers-only UNAVAILABLE when none is ready within the hold timeout.

gRPC is not terminated here. The connection's first request headers name the ModelService
(`:authority`, see routing.py); from then on bytes are copied both ways unchanged, apart from
the two SETTINGS acknowledgements h2frames.py explains. Every later call on the same
connection goes to the same pod, as through kube-proxy; a client that opens new connections
once the service is up reaches the pods directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from coxswain.activator.backends import Address, Backends, Key
from coxswain.activator.h2frames import (
    SERVER_SETTINGS,
    SETTINGS_ACK,
    DropFirstSettingsAck,
    FirstRequest,
    NotHttp2,
    first_request,
    grpc_error,
)
from coxswain.activator.hold import Hold
from coxswain.activator.proxy import REFUSED_PAUSE_SECONDS
from coxswain.activator.routing import UnknownHost, modelservice_of
from coxswain.activator.watch import Waker
from coxswain.grpc_wire import NOT_FOUND, PREFACE, UNAVAILABLE

log = logging.getLogger("coxswain.activator")

# A client that connects and sends no request within this is dropped.
FIRST_REQUEST_SECONDS = 30.0
CONNECT_SECONDS = 5.0
CHUNK = 64 * 1024

CONNECTIONS = Counter(
    "coxswain_activator_grpc_connections",
    "gRPC connections the activator took, by outcome: proxied (spliced to a ready pod), "
    "unavailable (no ready pod within the hold timeout), not_found (no ModelService named)",
    ["namespace", "modelservice", "outcome"],
)


@dataclass
class GrpcHolder:
    backends: Backends
    waker: Waker
    hold_timeout: float
    clock: Callable[[], float] = time.monotonic

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("gRPC connection ended: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # At once: a client waits for the server's SETTINGS before its first request.
        writer.write(SERVER_SETTINGS)
        buffered = bytearray()
        acked = False
        first: FirstRequest | None = None
        try:
            async with asyncio.timeout(FIRST_REQUEST_SECONDS):
                while first is None:
                    chunk = await reader.read(CHUNK)
                    if not chunk:
                        return
                    buffered += chunk
                    # The client's SETTINGS follows its preface; the pod's ACK of it is dropped.
                    if not acked and len(buffered) > len(PREFACE) + 9:
                        writer.write(SETTINGS_ACK)
                        acked = True
                    first = first_request(bytes(buffered))
        except NotHttp2 as exc:
            log.info("dropped a connection to the gRPC port: %s", exc)
            return
        except TimeoutError:
            return
        try:
            key = modelservice_of(first.authority)
        except UnknownHost as exc:
            CONNECTIONS.labels("", "", "not_found").inc()
            writer.write(grpc_error(first.stream, NOT_FOUND, str(exc)))
            await writer.drain()
            return
        upstream = await self._connect_when_ready(key)
        if upstream is None:
            CONNECTIONS.labels(*key, "unavailable").inc()
            message = (
                f"ModelService {key[0]}/{key[1]} has no ready pod after {self.hold_timeout:g} s "
                "(scaling up from zero); retry later"
            )
            writer.write(grpc_error(first.stream, UNAVAILABLE, message))
            await writer.drain()
            return
        CONNECTIONS.labels(*key, "proxied").inc()
        up_reader, up_writer = upstream
        to_pod = DropFirstSettingsAck(preface=True)
        up_writer.write(to_pod.feed(bytes(buffered)))
        try:
            await asyncio.gather(
                _copy(reader, up_writer, to_pod),
                _copy(up_reader, writer, DropFirstSettingsAck()),
            )
        finally:
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()

    async def _connect_when_ready(self, key: Key) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        deadline = self.clock() + self.hold_timeout
        hold = Hold(self.backends, self.waker, key, deadline, self.clock)
        try:
            while True:
                address = await hold.address("grpc")
                if address is None:
                    return None
                connection = await _open(address)
                if connection is not None:
                    return connection
                log.info("[%s/%s] pod %s:%d refused a gRPC connection; trying again", *key, *address)
                if self.clock() >= deadline:
                    return None
                await asyncio.sleep(REFUSED_PAUSE_SECONDS)
        finally:
            hold.end()


async def _open(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    ip, port = address
    try:
        async with asyncio.timeout(CONNECT_SECONDS):
            return await asyncio.open_connection(ip, port)
    except (OSError, TimeoutError):
        return None


async def _copy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, through: DropFirstSettingsAck
) -> None:
    """Copy until EOF, then half-close so the other side sees it too."""
    try:
        while chunk := await reader.read(CHUNK):
            out = through.feed(chunk)
            if out:
                writer.write(out)
                await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:  # reset, or the other side already gone
        writer.close()
