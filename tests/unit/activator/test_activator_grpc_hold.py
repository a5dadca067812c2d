"""The activator's gRPC side on loopback, with grpcio on both ends: a call on a connection
held until a pod is ready then answered by that pod (and the next call on the connection
too), the hold timeout answered UNAVAILABLE, a channel made for an IP answered NOT_FOUND.
The EndpointSlice watch is replaced by feeding `Backends` what it would see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from activator_doubles import RecordingWaker, ready_slice
from tritonclient.grpc import service_pb2, service_pb2_grpc

from coxswain.activator.backends import Backends
from coxswain.activator.grpc_hold import GrpcHolder

pytestmark = pytest.mark.unit

AUTHORITY = "digits.ml.svc.cluster.local:8081"


class Live(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        return service_pb2.ServerLiveResponse(live=True)


@pytest.fixture
async def pod() -> AsyncIterator[tuple[int, Live]]:
    server = grpc.aio.server()
    servicer = Live()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port, servicer
    await server.stop(None)


async def serve(holder: GrpcHolder) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(holder.handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def channel(port: int, authority: str = AUTHORITY) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", authority)])


async def test_a_held_call_is_answered_by_the_pod_once_it_is_ready(pod: tuple[int, Live]) -> None:
    pod_port, servicer = pod
    backends, waker = Backends(), RecordingWaker()
    server, port = await serve(GrpcHolder(backends, waker, hold_timeout=30))  # type: ignore[arg-type]
    try:
        async with channel(port) as ch:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            call = asyncio.ensure_future(stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=20))
            await asyncio.wait_for(waker.asked.wait(), 10)
            assert waker.keys[0] == ("ml", "digits") and not call.done()
            backends.update(ready_slice(http=1, grpc=pod_port))
            assert (await asyncio.wait_for(call, 10)).live
            # The connection is the pod's now: the next call goes there without a hold.
            assert (await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5)).live
            assert servicer.calls == 2
            assert len(waker.keys) == 1
    finally:
        server.close()


async def test_no_ready_pod_within_the_hold_timeout_is_unavailable_with_the_reason() -> None:
    server, port = await serve(GrpcHolder(Backends(), RecordingWaker(), hold_timeout=0.3))  # type: ignore[arg-type]
    try:
        async with channel(port) as ch:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "ml/digits has no ready pod after 0.3 s" in (caught.value.details() or "")
        async with channel(port, authority=f"127.0.0.1:{port}") as ch:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert "<name>.<namespace>.svc.cluster.local" in (caught.value.details() or "")
    finally:
        server.close()
