"""ASGI plumbing shared by the endpoints: types, body reading with limits, responses, tokens."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from coxswain_server.errors import BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send, "str | None"], Awaitable[None]]

JSON = b"application/json"
OCTETS = b"application/octet-stream"


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def authorization(scope: Scope) -> bytes | None:
    """The Authorization header's value, for coxswain_server.auth."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


async def read_body(
    scope: Scope, receive: Receive, limit: int, deadline_s: float
) -> tuple[bytes, int | None]:
    """The request body (decompressed if gzip/deflate) and Inference-Header-Content-Length.

    The whole body must arrive within `deadline_s` seconds: a client that trickles it would
    otherwise hold a connection and a request slot for as long as it likes.
    """
    try:
        async with asyncio.timeout(deadline_s):
            return await _read_body(scope, receive, limit)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {deadline_s:g}s (--request-read-timeout-seconds)"
        ) from None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> tuple[bytes, int | None]:
    length: int | None = None
    header_length: int | None = None
    encoding: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int_header(value, "Content-Length")
        elif name == b"inference-header-content-length":
            header_length = int_header(value, "Inference-Header-Content-Length")
        elif name == b"content-encoding":
            encoding = value.lower()
    if length is not None and length > limit:
        raise PayloadTooLarge(
            f"the body is {length} bytes; this server takes at most {limit} (--max-body-bytes)"
        )
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone()
    body: bytes = message.get("body", b"")
    if message.get("more_body"):
        # one growing buffer, not a list of chunks joined at the end: the join would hold
        # the body twice at its peak
        buffer = bytearray(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            buffer += message.get("body", b"")
            if len(buffer) > limit:
                raise PayloadTooLarge(f"the body is over {limit} bytes (--max-body-bytes)")
        body = buffer  # type: ignore[assignment]  # bytes-like: orjson, slicing and memoryview take it
    if encoding is not None and encoding != b"identity":
        body = decompress(body, encoding, limit)
    return body, header_length


def int_header(value: bytes, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"header {name} must be a whole number, got {value[:32]!r}") from None


def decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding == b"gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding.decode(errors='replace')} is not supported; use gzip, deflate or none"
        )
    decompressor = zlib.decompressobj(wbits)
    try:
        out = decompressor.decompress(body, limit + 1)  # bounded: a small bomb cannot fill memory
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid {encoding.decode()} data: {exc}") from None
    if len(out) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed body is over {limit} bytes (--max-body-bytes)")
    return out
