"""Just enough HTTP/2 framing (RFC 9113) for the activator to hold a gRPC connection.

The activator does not terminate gRPC: it reads a new connection's first request headers to
learn its `:authority` (which ModelService it is for), then splices the bytes to a server pod
once one is ready. Two SETTINGS acknowledgements have to be kept out of the splice: the
activator sends its own (empty) SETTINGS at once, since a client waits for the server's
before it sends a request, and acknowledges the client's SETTINGS itself; the client's ACK
of ours must not reach the pod, nor the pod's ACK of the client's SETTINGS reach the client.
Everything else passes untouched. Pure functions and a byte filter, so each rule is a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpack import Decoder
from hpack.exceptions import HPACKError

from coxswain.grpc_wire import (
    ACK,
    CONTINUATION,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    PADDED,
    PREFACE,
    PRIORITY_FLAG,
    SETTINGS,
    error_block,
    frame,
)

# A first request whose headers do not fit this is not a gRPC call we hold (the server's own
# limit on header lists is 16 KiB by default).
MAX_PREAMBLE = 64 * 1024


class NotHttp2(ValueError):
    """The bytes are not an HTTP/2 client connection's start (or not one we can read)."""


SERVER_SETTINGS = frame(SETTINGS, 0, 0)
SETTINGS_ACK = frame(SETTINGS, ACK, 0)


@dataclass(frozen=True)
class FirstRequest:
    authority: str
    stream: int


def first_request(buf: bytes) -> FirstRequest | None:
    """The first request's `:authority` and stream, once its header block is complete in
    `buf` (the connection's bytes so far); None while more bytes are needed."""
    if len(buf) < len(PREFACE):
        if not PREFACE.startswith(buf):
            raise NotHttp2("not an HTTP/2 connection preface (gRPC needs HTTP/2 with prior knowledge)")
        return None
    if not buf.startswith(PREFACE):
        raise NotHttp2("not an HTTP/2 connection preface (gRPC needs HTTP/2 with prior knowledge)")
    pos, block, stream = len(PREFACE), b"", 0
    while len(buf) >= pos + FRAME_HEADER:
        length = int.from_bytes(buf[pos : pos + 3], "big")
        kind, flags = buf[pos + 3], buf[pos + 4]
        sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        end = pos + FRAME_HEADER + length
        if end > MAX_PREAMBLE:
            raise NotHttp2(f"the first request's headers do not fit in {MAX_PREAMBLE} bytes")
        if len(buf) < end:
            return None
        payload = buf[pos + FRAME_HEADER : end]
        if kind == HEADERS and not stream:
            if flags & PADDED:
                if not payload or payload[0] >= len(payload):
                    raise NotHttp2("a HEADERS frame's padding is longer than the frame")
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            block, stream = payload, sid
        elif kind == CONTINUATION and stream and sid == stream:
            block += payload
        elif stream:
            raise NotHttp2("a header block was interrupted by another frame")
        if stream and flags & END_HEADERS:
            return FirstRequest(_authority(block), stream)
        pos = end
    if pos > MAX_PREAMBLE:
        raise NotHttp2(f"no request within the first {MAX_PREAMBLE} bytes")
    return None


def _authority(block: bytes) -> str:
    try:
        headers = Decoder().decode(block, raw=True)
    except HPACKError as exc:
        raise NotHttp2(f"the first request's headers cannot be decoded: {exc}") from exc
    for name, value in headers:
        if name in (b":authority", b"host"):
            return bytes(value).decode("latin-1")
    raise NotHttp2("the first request names no :authority")


def grpc_error(stream: int, code: int, message: str) -> bytes:
    """A trailers-only gRPC answer on `stream`, then GOAWAY: the connection is done, and any
    other stream the client opened on it is unprocessed (so safe to retry elsewhere)."""
    goaway = stream.to_bytes(4, "big") + (0).to_bytes(4, "big")
    return frame(HEADERS, END_STREAM | END_HEADERS, stream, error_block(code, message)) + frame(
        GOAWAY, 0, 0, goaway
    )


@dataclass
class DropFirstSettingsAck:
    """A byte filter for one direction of a spliced connection: frames pass unchanged,
    except the first SETTINGS ACK (after the preface, when `preface` is set), which is dropped.
    Once it has been dropped the filter is a plain pass-through."""

    preface: bool = False
    done: bool = False
    _pending: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        self._pending += data
        out = bytearray()
        if self.preface:
            if len(self._pending) < len(PREFACE):
                return b""
            out += self._pending[: len(PREFACE)]
            del self._pending[: len(PREFACE)]
            self.preface = False
        while len(self._pending) >= FRAME_HEADER:
            length = int.from_bytes(self._pending[:3], "big")
            end = FRAME_HEADER + length
            if len(self._pending) < end:
                break
            kind, flags = self._pending[3], self._pending[4]
            if kind == SETTINGS and flags & ACK:
                del self._pending[:end]
                self.done = True
                out += self._pending
                self._pending.clear()
                return bytes(out)
            out += self._pending[:end]
            del self._pending[:end]
        return bytes(out)
