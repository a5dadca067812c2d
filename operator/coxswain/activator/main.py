"""Run the activator: the HTTP proxy port, the gRPC port, an admin port (/metrics, /healthz,
/readyz), the EndpointSlice watch; SIGTERM stops taking connections and lets held HTTP
requests finish (gRPC connections end with the process; their clients reconnect)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coxswain.activator.backends import Backends
from coxswain.activator.grpc_hold import GrpcHolder
from coxswain.activator.proxy import Activator, make_app, new_session
from coxswain.activator.watch import Waker, watch_slices
from coxswain.kube import make_client

log = logging.getLogger("coxswain.activator")


def _admin_app(synced: asyncio.Event) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if synced.is_set():
            return web.Response(text="ok")
        return web.Response(status=503, text="the EndpointSlices have not been listed yet")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(
    host: str,
    port: int,
    admin_port: int,
    hold_timeout: float,
    namespaces: list[str] | None = None,
    grpc_port: int = 0,
) -> int:
    """Run until SIGTERM/SIGINT (0) or until the EndpointSlice watch ends (1: without it held
    requests would never learn of a ready pod, so the pod restarts instead)."""
    client = make_client()
    backends = Backends()
    synced = asyncio.Event()
    session = new_session()
    waker = Waker(client)
    activator = Activator(backends, waker, session, hold_timeout)
    runners = [web.AppRunner(make_app(activator)), web.AppRunner(_admin_app(synced))]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], host, port).start()
    if admin_port:
        await web.TCPSite(runners[1], host, admin_port).start()
    grpc_server = None
    if grpc_port:
        holder = GrpcHolder(backends, waker, hold_timeout)
        grpc_server = await asyncio.start_server(holder.handle, host, grpc_port)
    watcher = asyncio.create_task(watch_slices(client, backends, synced, namespaces))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "activator listening on %s:%d (gRPC %s, admin %d); holding requests up to %g s",
        host,
        port,
        grpc_port or "off",
        admin_port,
        hold_timeout,
    )
    await asyncio.wait([watcher, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    failed = watcher.done()
    if failed:
        why = watcher.exception() if not watcher.cancelled() else "cancelled"
        log.error(
            "the EndpointSlice watch ended (%s); exiting so the activator restarts. If this repeats, "
            "check the activator's RBAC (list/watch endpointslices) and the --namespace list",
            why or "no error",
        )
    if grpc_server is not None:
        grpc_server.close()
    # Held requests finish (answered or timed out) before the process goes.
    for runner in runners:
        await runner.cleanup()
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await watcher
    await session.close()
    await client.close()
    return 1 if failed else 0
