"""The gRPC transport (h2_unary.py) against real clients on loopback: grpcio for the calls
users make, and python-hyper's h2 as a low-level client for what grpcio never shows (flow
control with a tiny window, resets, deadlines, GOAWAY while draining). The HPACK decoder is
checked against python-hyper's on blocks its encoder makes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset, TrailersReceived
from h2.settings import SettingCodes
from hpack import Decoder, Encoder

from coxswain_server.h2_unary import GrpcAbort, UnaryServer
from coxswain_server.hpack_decode import HeaderDecoder

ECHO = "/t.Test/Echo"


def test_hpack_decoder_agrees_with_python_hyper_on_every_kind_of_field() -> None:
    rng = random.Random(7)
    encoder, reference, ours = Encoder(), Decoder(), HeaderDecoder()
    names = [b":path", b":authority", b"grpc-timeout", b"user-agent", b"x-trace", b"authorization", b"te"]
    for _ in range(2000):
        headers = [
            (
                rng.choice(names),
                bytes(rng.choice(b"abcxyz0129%~ /") for _ in range(rng.randint(0, 300))),
                rng.random() < 0.2,
            )
            for _ in range(rng.randint(1, 10))
        ]
        if rng.random() < 0.05:  # table size updates, down to an empty table and back
            encoder.header_table_size = rng.choice([0, 256, 4096])
        block = encoder.encode(headers, huffman=rng.random() < 0.5)
        expected = [(bytes(n), bytes(v)) for n, v in reference.decode(block, raw=True)]
        assert ours.decode(block) == expected


def test_hpack_decoder_refuses_an_index_outside_the_table_and_a_blown_up_header_list() -> None:
    from coxswain_server.hpack_decode import HpackError

    with pytest.raises(HpackError, match="index 70"):
        HeaderDecoder().decode(bytes([0x80 | 70]))
    decoder = HeaderDecoder(max_list_size=10_000)
    block = Encoder().encode([("x-big", "v" * 3000)])  # added to the table: index 62
    decoder.decode(block)
    with pytest.raises(HpackError, match="over 10000 bytes"):
        decoder.decode(bytes([0x80 | 62]) * 4)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[UnaryServer]]]:
    servers: list[UnaryServer] = []

    async def start(
        handlers: dict[str, Any], max_message: int = 1 << 20, read_timeout: float = 30
    ) -> UnaryServer:
        server = UnaryServer(handlers, max_message=max_message, read_timeout=read_timeout)
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(1)


async def echo(data: bytes, call: Any) -> bytes:
    if data == b"refuse":
        raise GrpcAbort(8, "too busy: 100% ünïcode", [("retry-after", "3")])
    return data[::-1]


async def test_grpcio_calls_get_answers_errors_with_their_messages_and_trailers(serve: Any) -> None:
    server = await serve({ECHO: echo}, max_message=1000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary(ECHO)
        assert await call(b"hello", timeout=10) == b"olleh"
        assert await asyncio.gather(*(call(b"%d" % i, timeout=10) for i in range(200))) == [
            (b"%d" % i)[::-1] for i in range(200)
        ]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(b"refuse", timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == "too busy: 100% ünïcode"
        assert ("retry-after", "3") in tuple(refused.value.trailing_metadata() or ())
        with pytest.raises(grpc.aio.AioRpcError) as big:
            await call(b"x" * 1001, timeout=10)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "1001 vs. 1000" in (
            big.value.details() or ""
        )
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await channel.unary_unary("/t.Test/Nope")(b"", timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert await call(b"still fine", timeout=10) == b"enif llits"


class H2Client:
    """A bare HTTP/2 client: sends what a test says, collects events per stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, **settings: int) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings({getattr(SettingCodes, k): v for k, v in settings.items()})
        self.events: list[Any] = []
        self.flush()

    @classmethod
    async def connect(cls, port: int, **settings: int) -> H2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, **settings)

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    def request(self, path: str, message: bytes, *headers: tuple[str, str], end: bool = True) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            sid,
            [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "t"),
             ("content-type", "application/grpc"), ("te", "trailers"), *headers],
        )  # fmt: skip
        self.h2.send_data(sid, b"\0" + len(message).to_bytes(4, "big") + message, end_stream=end)
        self.flush()
        return sid

    async def until(self, done: Callable[[Any], bool], seconds: float = 10) -> Any:
        async with asyncio.timeout(seconds):
            while True:
                for event in self.events:
                    if done(event):
                        return event
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("the server closed the connection")
                for event in self.h2.receive_data(data):
                    if isinstance(event, DataReceived):
                        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    self.events.append(event)
                self.flush()

    def body(self, sid: int) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, DataReceived) and e.stream_id == sid)

    def trailers(self, sid: int) -> dict[bytes, bytes]:
        for e in self.events:
            if isinstance(e, TrailersReceived | ResponseReceived) and e.stream_id == sid:
                headers = dict(e.headers)
                if b"grpc-status" in headers:
                    return headers
        raise AssertionError(f"no trailers on stream {sid}")


async def test_an_answer_bigger_than_the_clients_window_and_frame_size_arrives_whole(serve: Any) -> None:
    async def big(data: bytes, call: Any) -> bytes:
        return bytes(range(256)) * 400  # 102,400 bytes

    server = await serve({ECHO: big})
    client = await H2Client.connect(server.port, INITIAL_WINDOW_SIZE=1000)
    sid = client.request(ECHO, b"")
    await client.until(lambda e: isinstance(e, StreamEnded) and e.stream_id == sid)
    frames = [e for e in client.events if isinstance(e, DataReceived) and e.stream_id == sid]
    assert max(len(e.data) for e in frames) <= 16384 and len(frames) > 100  # the window was 1000
    assert client.body(sid) == b"\0" + (102_400).to_bytes(4, "big") + bytes(range(256)) * 400
    assert client.trailers(sid)[b"grpc-status"] == b"0"


async def test_a_deadline_or_a_reset_cancels_the_handler(serve: Any) -> None:
    cancelled: list[bytes] = []
    both, running = asyncio.Event(), asyncio.Event()

    async def hang(data: bytes, call: Any) -> bytes:
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(data)
            if len(cancelled) == 2:
                both.set()
            raise
        return b""

    server = await serve({ECHO: hang})
    client = await H2Client.connect(server.port)
    sid = client.request(ECHO, b"deadline", ("grpc-timeout", "50m"))
    await client.until(lambda e: isinstance(e, StreamEnded) and e.stream_id == sid)
    assert client.trailers(sid)[b"grpc-status"] == b"4"
    running.clear()
    sid = client.request(ECHO, b"reset")
    await asyncio.wait_for(running.wait(), 10)
    client.h2.reset_stream(sid)
    client.flush()
    await asyncio.wait_for(both.wait(), 10)
    assert cancelled == [b"deadline", b"reset"]


async def test_stopping_finishes_calls_in_flight_and_takes_no_new_connection(serve: Any) -> None:
    release, started = asyncio.Event(), asyncio.Event()

    async def slow(data: bytes, call: Any) -> bytes:
        started.set()
        await release.wait()
        return data

    server = await serve({ECHO: slow})
    port = server.port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = asyncio.ensure_future(channel.unary_unary(ECHO)(b"in flight", timeout=30))
        await asyncio.wait_for(started.wait(), 10)
        stopping = asyncio.create_task(server.stop(10))
        await asyncio.sleep(0)  # stop() closes the listener before its first await
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        assert not stopping.done()  # it waits for the call
        release.set()
        assert await asyncio.wait_for(call, 10) == b"in flight"
        await asyncio.wait_for(stopping, 10)


async def test_a_stream_that_sends_more_than_the_limit_is_stopped_early(serve: Any) -> None:
    server = await serve({ECHO: echo}, max_message=1000)
    client = await H2Client.connect(server.port)
    sid = client.request(ECHO, b"y" * 5000, end=False)
    await client.until(lambda e: isinstance(e, StreamReset) and e.stream_id == sid)
    assert client.trailers(sid)[b"grpc-status"] == b"8"
    sid = client.request(ECHO, b"after")  # the connection goes on
    await client.until(lambda e: isinstance(e, StreamEnded) and e.stream_id == sid)
    assert client.body(sid).endswith(b"retfa")


async def test_a_message_that_never_ends_gets_deadline_exceeded_and_the_connection_goes_on(
    serve: Any,
) -> None:
    server = await serve({ECHO: echo}, read_timeout=0.2)
    client = await H2Client.connect(server.port)
    sid = client.request(ECHO, b"no end", end=False)  # the stream is never ended
    await client.until(lambda e: isinstance(e, StreamReset) and e.stream_id == sid)
    trailers = client.trailers(sid)
    assert trailers[b"grpc-status"] == b"4" and b"did not arrive within 0.2s" in trailers[b"grpc-message"]
    sid = client.request(ECHO, b"ok")
    await client.until(lambda e: isinstance(e, StreamEnded) and e.stream_id == sid)
    assert client.body(sid).endswith(b"ko")


async def test_a_client_that_does_not_speak_http2_is_told_so_and_closed(serve: Any) -> None:
    server = await serve({ECHO: echo})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server closes
    assert b"not an HTTP/2 connection preface" in data
    writer.close()
