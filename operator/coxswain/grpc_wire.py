"""HTTP/2 frames (RFC 9113) and gRPC's answers, as bytes: what both the activator (holding a
gRPC connection, activator/h2frames.py) and the model server (serving gRPC,
coxswain_server/h2_unary.py) write. Both images carry this package.

Header blocks are made of literals never indexed (RFC 7541 section 6.2.3): they touch no
HPACK table, so the same bytes are right on any connection and can be made once.
"""

from __future__ import annotations

from collections.abc import Iterable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
# frame flags
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20

# gRPC status codes (grpc/doc/statuscodes.md)
INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, PERMISSION_DENIED = 3, 4, 5, 7
RESOURCE_EXHAUSTED, FAILED_PRECONDITION, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = (
    8,
    9,
    12,
    13,
    14,
    16,
)

# the longest grpc-message sent: an answer's header block always fits one frame
MAX_MESSAGE_CHARS = 2048


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _integer(value: int, prefix_bits: int) -> bytes:
    """An HPACK integer (RFC 7541 section 5.1) with the bits above the prefix clear."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """One header as a literal never indexed, with a new name."""
    return b"\x10" + _integer(len(name), 7) + name + _integer(len(value), 7) + value


def percent_encode(message: str) -> str:
    """grpc-message's encoding: bytes outside printable ASCII, and %, as %XX."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode("utf-8")
    )


STATUS_200 = b"\x88"  # `:status: 200`, index 8 of HPACK's static table
RESPONSE_HEADERS = STATUS_200 + literal(b"content-type", b"application/grpc")
OK_TRAILERS = literal(b"grpc-status", b"0")


def error_block(code: int, message: str, trailing: Iterable[tuple[str, str]] = ()) -> bytes:
    """The header block of a trailers-only answer: status `code`, `message` and `trailing`."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    block = (
        RESPONSE_HEADERS
        + literal(b"grpc-status", str(code).encode())
        + literal(b"grpc-message", percent_encode(message).encode("ascii"))
    )
    for name, value in trailing:
        block += literal(name.encode("latin-1"), value.encode("latin-1"))
    return block
