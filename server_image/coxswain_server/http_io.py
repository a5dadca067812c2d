"""ASGI plumbing shared by the endpoints: types, body reading with limits, responses, tokens."""

from __future__ import annotations

import hmac
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from coxswain_server.errors import BadRequest, PayloadTooLarge, Unauthorized, UnsupportedMediaType

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


def check_bearer(scope: Scope, expected: bytes, message: str) -> None:
    """`expected` is the whole header value, b"Bearer <token>"; compared in constant time."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            if hmac.compare_digest(value, expected):
                return
            raise Unauthorized("the bearer token is not valid")
    raise Unauthorized(message)


async def read_body(scope: Scope, receive: Receive, limit: int) -> tuple[bytes, int | None]:
    """The request body (decompressed if gzip/deflate) and Inference-Header-Content-Length."""
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
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is over {limit} bytes (--max-body-bytes)")
            chunks.append(chunk)
        body = b"".join(chunks)
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
