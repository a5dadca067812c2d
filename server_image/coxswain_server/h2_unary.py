"""HTTP/2 (RFC 9113) for unary gRPC calls: the transport under `grpc_service.py`.

Why our own and not grpcio's server: a unary call is three frames each way, and grpcio's
asyncio server spent most of each call in its C core and Cython glue (py-spy: 48% of the
server's CPU at 32 concurrent calls). An asyncio Protocol that parses frames in place and
answers with pre-encoded header blocks does the same with canned answers at 3.8x the rate
(ghz, one connection, 32 concurrent: 5760 calls/s against 1527 on this 2-core machine).

Frames and answer header blocks are made by `coxswain.grpc_wire` (shared with the activator).
What it covers is what gRPC clients use for unary calls: the connection preface and SETTINGS,
HPACK request headers (hpack_decode.py, one decoder per connection), flow control in both
directions, PING, RST_STREAM (cancels the call), `grpc-timeout` (the call is cancelled and
answered DEADLINE_EXCEEDED), and GOAWAY to drain. Not covered, on purpose: server push,
priorities (ignored, as RFC 9113 allows), and compressed messages (answered UNIMPLEMENTED:
the clients here never compress unless asked).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from coxswain.grpc_wire import (
    ACK,
    CONTINUATION,
    DATA,
    DEADLINE_EXCEEDED,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    INTERNAL,
    INVALID_ARGUMENT,
    OK_TRAILERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RESOURCE_EXHAUSTED,
    RESPONSE_HEADERS,
    RST_STREAM,
    SETTINGS,
    UNIMPLEMENTED,
    WINDOW_UPDATE,
    error_block,
    frame,
)
from coxswain_server.hpack_decode import HeaderDecoder, HpackError

log = logging.getLogger("coxswain_server.grpc")

# SETTINGS identifiers
ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = range(2, 7)

# error codes (RFC 9113 section 7)
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR = (
    0,
    1,
    3,
    6,
    7,
    9,
)

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
OUR_MAX_FRAME = 1 << 20  # frames a client may send us
MAX_HEADER_LIST = 64 * 1024
# the connection's receive window is topped up once this much of it has been used
WINDOW_REFILL = 1 << 24


class GrpcAbort(Exception):
    """Ends a call with a gRPC status other than OK; `trailing` goes into the trailers."""

    def __init__(self, code: int, message: str, trailing: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailing = tuple(trailing)


@dataclass(slots=True)
class Call:
    """What a handler knows of its call besides the message."""

    method: str
    metadata: list[tuple[bytes, bytes]]  # every request header, pseudo-headers included

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.metadata:
            if key == name:
                return value
        return None


Handler = Callable[[bytes, Call], Awaitable[bytes]]
# a call refused by the transport itself, before any handler saw it: (method, gRPC code)
RefusalHook = Callable[[str, int], None]


TIMEOUT_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout (`<digits><unit>`) in seconds; None when it does not parse."""
    unit = TIMEOUT_UNITS.get(value[-1]) if value else None
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class _Stream:
    __slots__ = (
        "answered",
        "body",
        "call",
        "done_receiving",
        "expected",
        "handler",
        "id",
        "pending",
        "read_timer",
        "send_window",
        "task",
        "timer",
    )  # fmt: skip

    def __init__(self, sid: int, call: Call, handler: Handler | None, send_window: int) -> None:
        self.id = sid
        self.call = call
        self.handler = handler
        self.body = bytearray()
        self.expected = -1  # the message's length once its 5-byte prefix has arrived
        self.send_window = send_window
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # grpc-timeout
        self.read_timer: asyncio.TimerHandle | None = None  # the whole message must arrive in time
        self.pending = b""  # answer DATA not yet sent for want of flow-control window
        self.answered = False  # the header block of an answer (or an error) went out
        self.done_receiving = False


class ConnectionError_(Exception):
    """The peer broke HTTP/2: the connection ends with GOAWAY and this code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Connection(asyncio.Protocol):
    """One client connection: frames in, calls dispatched as tasks, answers out."""

    def __init__(self, server: UnaryServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface = False
        self.decoder = HeaderDecoder(max_list_size=MAX_HEADER_LIST)
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.headers_for = 0  # a header block continues on this stream (CONTINUATION)
        self.header_block = bytearray()
        self.header_flags = 0
        self.send_window = DEFAULT_WINDOW  # connection level, toward the client
        self.peer_window = DEFAULT_WINDOW  # each new stream's initial window toward the client
        self.peer_max_frame = DEFAULT_FRAME
        self.received = 0  # bytes of DATA since the last connection WINDOW_UPDATE
        self.blocked: deque[_Stream] = deque()  # answers waiting for connection window
        self.going_away = False
        self.closed = False
        self.outbuf: list[bytes] = []  # written once per loop iteration: one syscall for a batch's answers

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.connections.add(self)
        settings = (
            MAX_CONCURRENT_STREAMS.to_bytes(2, "big") + self.server.max_streams.to_bytes(4, "big")
            + INITIAL_WINDOW_SIZE.to_bytes(2, "big") + self.server.stream_window.to_bytes(4, "big")
            + MAX_FRAME_SIZE.to_bytes(2, "big") + OUR_MAX_FRAME.to_bytes(4, "big")
            + MAX_HEADER_LIST_SIZE.to_bytes(2, "big") + MAX_HEADER_LIST.to_bytes(4, "big")
            + ENABLE_PUSH.to_bytes(2, "big") + (0).to_bytes(4, "big")
        )  # fmt: skip
        self.transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big"))
        )
        if self.server.stopping:
            self.goaway(NO_ERROR)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self._cancel(stream)
        self.streams.clear()
        self.server.changed()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        buf = self.buf
        buf += data
        try:
            if not self.preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buf)):
                        raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                if not buf.startswith(PREFACE):
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buf[: len(PREFACE)]
                self.preface = True
            pos, n = 0, len(buf)
            out: list[bytes] = []
            while n - pos >= FRAME_HEADER:
                length = int.from_bytes(buf[pos : pos + 3], "big")
                if length > OUR_MAX_FRAME:
                    raise ConnectionError_(
                        FRAME_SIZE_ERROR, f"a frame of {length} bytes (max {OUR_MAX_FRAME})"
                    )
                end = pos + FRAME_HEADER + length
                if n < end:
                    break
                kind, flags = buf[pos + 3], buf[pos + 4]
                sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(buf[pos + FRAME_HEADER : end])
                pos = end
                self._frame(kind, flags, sid, payload, out)
            del buf[:pos]
            if self.received >= WINDOW_REFILL:
                out.append(frame(WINDOW_UPDATE, 0, 0, self.received.to_bytes(4, "big")))
                self.received = 0
            self._write(out)
        except ConnectionError_ as exc:
            log.debug("closing a gRPC connection: %s", exc)
            self.goaway(exc.code, str(exc))
            self._close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # --- frames -------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, out: list[bytes]) -> None:
        if self.headers_for and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "a header block was interrupted by another frame")
        if kind == DATA:
            self._data(flags, sid, payload, out)
        elif kind == HEADERS:
            if not sid or sid % 2 == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on an invalid stream")
            if flags & PADDED:
                payload = _unpad(payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if len(payload) > MAX_HEADER_LIST:
                raise ConnectionError_(PROTOCOL_ERROR, f"a header block over {MAX_HEADER_LIST} bytes")
            self.header_block = bytearray(payload)
            self.header_flags = flags
            if flags & END_HEADERS:
                self._headers(sid, out)
            else:
                self.headers_for = sid
        elif kind == CONTINUATION:
            if sid != self.headers_for or not sid:
                raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without a header block")
            self.header_block += payload
            if len(self.header_block) > MAX_HEADER_LIST:
                raise ConnectionError_(PROTOCOL_ERROR, "a header block too large")
            if flags & END_HEADERS:
                self.headers_for = 0
                self._headers(sid, out)
        elif kind == SETTINGS:
            if sid:
                raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & ACK:
                self._settings(payload)
                out.append(frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if len(payload) != 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "PING of the wrong size")
            if not flags & ACK:
                out.append(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
            self._window_update(sid, int.from_bytes(payload, "big") & 0x7FFFFFFF)
        elif kind == RST_STREAM:
            stream = self.streams.pop(sid, None)
            if stream is not None:
                self._cancel(stream)
                self.server.changed()
        elif kind == GOAWAY:
            self.going_away = True  # the client opens no new streams; those open finish
            self._close_if_idle()
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "a client cannot push")
        # PRIORITY and unknown frame types are ignored (RFC 9113 sections 5.3.2, 5.5)

    def _headers(self, sid: int, out: list[bytes]) -> None:
        block = bytes(self.header_block)
        self.header_block = bytearray()
        try:
            # every block must be decoded, even one for a stream refused below: HPACK's
            # dynamic table is shared by the whole connection
            headers = self.decoder.decode(block)
        except HpackError as exc:
            raise ConnectionError_(COMPRESSION_ERROR, f"request headers cannot be decoded: {exc}") from None
        if sid in self.streams:
            # trailers from the client: a unary request has none we read, but they may end it
            if self.header_flags & END_STREAM:
                self._data(END_STREAM, sid, b"", out)
            return
        if sid <= self.last_stream:
            return  # a stream already answered (or refused) and closed: its late frames are dropped
        self.last_stream = sid
        if self.going_away or self.server.stopping:
            out.append(frame(RST_STREAM, 0, sid, REFUSED_STREAM.to_bytes(4, "big")))
            return
        if len(self.streams) >= self.server.max_streams:
            out.append(frame(RST_STREAM, 0, sid, REFUSED_STREAM.to_bytes(4, "big")))
            return
        metadata = headers
        path = b""
        timeout = None
        for key, value in metadata:
            if key == b":path":
                path = value
            elif key == b"grpc-timeout":
                timeout = parse_timeout(value)
        method = path.decode("latin-1")
        handler = self.server.handlers.get(path)
        stream = _Stream(sid, Call(method, metadata), handler, self.peer_window)
        self.streams[sid] = stream
        if handler is None:
            self._error(
                stream, UNIMPLEMENTED, f"method {method} is not implemented by this server", out, refused=True
            )
            return
        loop = asyncio.get_running_loop()
        if timeout is not None:
            stream.timer = loop.call_later(timeout, self._deadline, stream)
        if self.header_flags & END_STREAM:
            stream.done_receiving = True
            self._dispatch(stream, out)
        else:
            stream.read_timer = loop.call_later(self.server.read_timeout, self._read_deadline, stream)

    def _data(self, flags: int, sid: int, payload: bytes, out: list[bytes]) -> None:
        self.received += len(payload)
        if flags & PADDED:
            payload = _unpad(payload)
        stream = self.streams.get(sid)
        if stream is None or stream.done_receiving:
            if sid > self.last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on a stream never opened")
            return  # a stream already answered or reset: its bytes are dropped
        if not stream.answered:
            body = stream.body
            body += payload
            if stream.expected < 0 and len(body) >= 5:
                if body[0]:
                    self._error(
                        stream, UNIMPLEMENTED, "compressed messages are not supported; send them uncompressed", out,
                        refused=True,
                    )  # fmt: skip
                else:
                    stream.expected = int.from_bytes(body[1:5], "big")
                    limit = self.server.max_message
                    if stream.expected > limit:
                        self._error(
                            stream,
                            RESOURCE_EXHAUSTED,
                            f"received message larger than max ({stream.expected} vs. {limit})",
                            out,
                            refused=True,
                        )
            if not stream.answered and stream.expected >= 0 and len(body) > stream.expected + 5:
                self._error(
                    stream, INVALID_ARGUMENT, "a unary call carries exactly one message", out, refused=True
                )
        if flags & END_STREAM:
            stream.done_receiving = True
            if stream.read_timer is not None:
                stream.read_timer.cancel()
                stream.read_timer = None
            if not stream.answered:
                self._dispatch(stream, out)

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "an initial window over 2^31-1")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                if delta > 0:
                    for stream in list(self.streams.values()):
                        if stream.pending:
                            self._send_pending(stream)
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 2**24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value

    def _window_update(self, sid: int, increment: int) -> None:
        if sid == 0:
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "the connection window overflowed")
            self._flush_blocked()
            return
        stream = self.streams.get(sid)
        if stream is not None:
            stream.send_window += increment
            if stream.pending:
                self._send_pending(stream)

    # --- calls --------------------------------------------------------------------------

    def _dispatch(self, stream: _Stream, out: list[bytes]) -> None:
        body = stream.body
        if len(body) < 5 or len(body) != stream.expected + 5:
            self._error(
                stream, INVALID_ARGUMENT, "a unary call carries exactly one message, and it was incomplete", out,
                refused=True,
            )  # fmt: skip
            return
        message = bytes(body[5:])
        stream.body = bytearray()
        assert stream.handler is not None
        stream.task = asyncio.get_running_loop().create_task(self._run(stream, stream.handler, message))

    async def _run(self, stream: _Stream, handler: Handler, message: bytes) -> None:
        try:
            answer = await handler(message, stream.call)
        except GrpcAbort as exc:
            if stream.id in self.streams and not self.closed:
                out: list[bytes] = []
                self._error(stream, exc.code, exc.message, out, exc.trailing)
                self._write(out)
            return
        except asyncio.CancelledError:
            return  # reset by the client, its deadline passed, or the connection went
        except Exception:
            log.exception("unexpected error serving a gRPC call to %s", stream.call.method)
            if stream.id in self.streams and not self.closed:
                out = []
                self._error(stream, INTERNAL, "internal error; see the server log", out)
                self._write(out)
            return
        finally:
            stream.task = None
            if stream.timer is not None:
                stream.timer.cancel()
        if stream.id not in self.streams or self.closed:
            return
        self._answer(stream, answer)

    def _answer(self, stream: _Stream, answer: bytes) -> None:
        stream.answered = True
        data = b"\0" + len(answer).to_bytes(4, "big") + answer
        size = len(data)
        if size <= self.send_window and size <= stream.send_window and size <= self.peer_max_frame:
            # the usual case: the whole answer in one write
            self.send_window -= size
            stream.send_window -= size
            self._write_bytes(
                frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS)
                + frame(DATA, 0, stream.id, data)
                + frame(HEADERS, END_STREAM | END_HEADERS, stream.id, OK_TRAILERS)
            )
            self._finish(stream)
            return
        self._write_bytes(frame(HEADERS, END_HEADERS, stream.id, RESPONSE_HEADERS))
        stream.pending = data
        self._send_pending(stream)

    def _send_pending(self, stream: _Stream) -> None:
        """Send as much of the answer's DATA as both windows allow; trailers once it is all out."""
        out: list[bytes] = []
        while stream.pending:
            n = min(len(stream.pending), self.send_window, stream.send_window, self.peer_max_frame)
            if n <= 0:
                if self.send_window <= 0 and stream not in self.blocked:
                    self.blocked.append(stream)
                break
            out.append(frame(DATA, 0, stream.id, stream.pending[:n]))
            stream.pending = stream.pending[n:]
            self.send_window -= n
            stream.send_window -= n
        if not stream.pending:
            out.append(frame(HEADERS, END_STREAM | END_HEADERS, stream.id, OK_TRAILERS))
        self._write(out)
        if not stream.pending:
            self._finish(stream)

    def _flush_blocked(self) -> None:
        # streams waiting only on their own window are sent from their WINDOW_UPDATE
        while self.blocked and self.send_window > 0:
            stream = self.blocked.popleft()
            if stream.id in self.streams and stream.pending:
                self._send_pending(stream)

    def _error(
        self,
        stream: _Stream,
        code: int,
        message: str,
        out: list[bytes],
        trailing: Iterable[tuple[str, str]] = (),
        *,
        refused: bool = False,
    ) -> None:
        """A trailers-only answer; a client still sending is told to stop (RST_STREAM NO_ERROR).
        `refused`: no handler saw the call (the server's refusal hook counts it)."""
        stream.answered = True
        stream.body = bytearray()
        out.append(frame(HEADERS, END_STREAM | END_HEADERS, stream.id, error_block(code, message, trailing)))
        if not stream.done_receiving:
            out.append(frame(RST_STREAM, 0, stream.id, NO_ERROR.to_bytes(4, "big")))
        if refused:
            self.server.on_refused(stream.call.method, code)
        self._finish(stream)

    def _deadline(self, stream: _Stream) -> None:
        stream.timer = None
        if stream.id not in self.streams or stream.answered:
            return
        running = stream.task is not None
        if stream.task is not None:
            stream.task.cancel()  # the handler counts its own cancelled call
        out: list[bytes] = []
        self._error(
            stream, DEADLINE_EXCEEDED, "the call's deadline (grpc-timeout) passed", out, refused=not running
        )
        self._write(out)

    def _read_deadline(self, stream: _Stream) -> None:
        """A message that trickles in holds a stream and its buffer: as over HTTP (408), the
        whole of it must arrive within the read timeout."""
        stream.read_timer = None
        if stream.id not in self.streams or stream.answered or stream.done_receiving:
            return
        out: list[bytes] = []
        message = f"the request message did not arrive within {self.server.read_timeout:g}s"
        self._error(stream, DEADLINE_EXCEEDED, message, out, refused=True)
        self._write(out)

    def _finish(self, stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if stream.read_timer is not None:
            stream.read_timer.cancel()
            stream.read_timer = None
        self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        if self.streams.pop(stream.id, None) is not None and self.server.stopping:
            self.server.changed()
        self._close_if_idle()

    def _cancel(self, stream: _Stream) -> None:
        if stream.read_timer is not None:
            stream.read_timer.cancel()
        if stream.timer is not None:
            stream.timer.cancel()
        if stream.task is not None:
            stream.task.cancel()

    # --- output and shutdown ------------------------------------------------------------

    def _write(self, out: list[bytes]) -> None:
        if out:
            self._write_bytes(b"".join(out))

    def _write_bytes(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            return
        if not self.outbuf:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outbuf.append(data)

    def _flush(self) -> None:
        if self.outbuf and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.outbuf))
        self.outbuf.clear()

    def goaway(self, code: int, reason: str = "") -> None:
        """No new streams after those already seen; a client retries the others elsewhere."""
        self.going_away = True
        payload = self.last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + reason.encode()[:200]
        self._write_bytes(frame(GOAWAY, 0, 0, payload))
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.going_away and not self.streams:
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush()  # a GOAWAY or last answer still buffered goes first
            self.closed = True
            self.transport.close()


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


class UnaryServer:
    """Listens, serves unary calls to `handlers` (keyed by `/package.Service/Method`), drains."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        max_message: int,
        max_streams: int = 1000,
        read_timeout: float = 30.0,
        on_refused: RefusalHook | None = None,
    ) -> None:
        self.handlers = {path.encode("latin-1"): handler for path, handler in handlers.items()}
        self.max_message = max_message
        self.max_streams = max_streams
        self.read_timeout = read_timeout
        # a stream's window holds one whole message: no per-stream WINDOW_UPDATE is ever needed,
        # and a client cannot send more before it is answered RESOURCE_EXHAUSTED
        self.stream_window = min(MAX_WINDOW, max_message + 5 + DEFAULT_FRAME)
        self.on_refused = on_refused or (lambda method, code: None)
        self.connections: set[Connection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), host, port, reuse_port=False)

    @property
    def port(self) -> int:
        """The port listened on (what port 0 was given)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def changed(self) -> None:
        if self.stopping and not any(c.streams for c in self.connections):  # only while draining
            self._idle.set()

    async def stop(self, grace_seconds: float) -> None:
        """Take no new calls (GOAWAY to every connection), finish those in flight for up to
        `grace_seconds`, then close every connection."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        for connection in list(self.connections):
            connection.goaway(NO_ERROR)
        self.changed()
        try:
            await asyncio.wait_for(self._idle.wait(), grace_seconds)
        except TimeoutError:
            log.warning("gRPC: %d calls still running after %.0fs; closing their connections",
                        sum(len(c.streams) for c in self.connections), grace_seconds)  # fmt: skip
        for connection in list(self.connections):
            connection._close()
        self._server = None
