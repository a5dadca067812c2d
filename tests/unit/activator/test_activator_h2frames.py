"""The activator's HTTP/2 reading and writing, against h2 (python-hyper's HTTP/2 stack) as the
other side: a client's first request headers in every framing a client may use, the
trailers-only gRPC error a client must read, and the SETTINGS-ACK filter of the splice."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from hpack import Encoder

from coxswain.activator.h2frames import (
    CONTINUATION,
    END_HEADERS,
    HEADERS,
    PADDED,
    PREFACE,
    SERVER_SETTINGS,
    SETTINGS,
    SETTINGS_ACK,
    DropFirstSettingsAck,
    NotHttp2,
    first_request,
    frame,
    grpc_error,
)
from coxswain.grpc_wire import UNAVAILABLE, percent_encode

pytestmark = pytest.mark.unit

AUTHORITY = "digits.ml.svc.cluster.local:8081"
REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/inference.GRPCInferenceService/ModelInfer"),
    (":authority", AUTHORITY),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def client_bytes(**priority: int) -> bytes:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, REQUEST, **priority)  # type: ignore[arg-type]
    conn.send_data(1, b"\0\0\0\0\x05hello")
    return conn.data_to_send()


def test_the_first_requests_authority_once_its_headers_are_complete() -> None:
    data = client_bytes()
    found = first_request(data)
    assert found is not None and (found.authority, found.stream) == (AUTHORITY, 1)
    # Byte by byte, nothing is claimed before the header block is whole.
    end = next(n for n in range(len(data) + 1) if first_request(data[:n]) is not None)
    assert first_request(data[: end - 1]) is None and end > len(PREFACE) + 9


def test_priority_padding_and_continuation_frames_are_read() -> None:
    assert first_request(client_bytes(priority_weight=200, priority_depends_on=0)) is not None
    block = Encoder().encode(REQUEST)
    settings = frame(SETTINGS, 0, 0)
    padded = frame(HEADERS, END_HEADERS | PADDED, 3, bytes([4]) + block + b"\0" * 4)
    found = first_request(PREFACE + settings + padded)
    assert found is not None and (found.authority, found.stream) == (AUTHORITY, 3)
    split = frame(HEADERS, 0, 5, block[:7]) + frame(CONTINUATION, END_HEADERS, 5, block[7:])
    assert first_request(PREFACE + settings + split[:20]) is None
    found = first_request(PREFACE + settings + split)
    assert found is not None and found.authority == AUTHORITY


def test_what_is_not_an_http2_client_is_refused_with_the_reason() -> None:
    with pytest.raises(NotHttp2, match="prior knowledge"):
        first_request(b"POST /v2/models/x/infer HTTP/1.1\r\n")
    with pytest.raises(NotHttp2, match="prior knowledge"):
        first_request(b"GET")
    block = Encoder().encode([(":method", "POST"), (":path", "/x")])
    with pytest.raises(NotHttp2, match="no :authority"):
        first_request(PREFACE + frame(HEADERS, END_HEADERS, 1, block))
    interrupted = frame(HEADERS, 0, 1, block) + frame(SETTINGS, 0, 0)
    with pytest.raises(NotHttp2, match="interrupted"):
        first_request(PREFACE + interrupted)


def test_the_grpc_error_is_a_trailers_only_answer_then_goaway() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, REQUEST)
    message = "ModelService ml/digits has no ready pod after 300 s; 100% sure"
    events = client.receive_data(SERVER_SETTINGS + SETTINGS_ACK + grpc_error(1, UNAVAILABLE, message))
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    headers = dict(response.headers)  # type: ignore[arg-type]
    assert headers[b":status"] == b"200" and headers[b"grpc-status"] == b"14"
    assert (
        headers[b"grpc-message"] == percent_encode(message).encode()
        and b"100%25 sure" in headers[b"grpc-message"]
    )
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in events)
    goaway = next(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
    assert goaway.last_stream_id == 1 and goaway.error_code == 0


def test_the_splice_filter_drops_only_the_first_settings_ack_in_any_chunking() -> None:
    ping = frame(0x6, 0, 0, b"12345678")
    data = frame(0x0, 0, 1, b"payload")
    stream = PREFACE + frame(SETTINGS, 0, 0, b"\0\x04\0\x01\0\0") + SETTINGS_ACK + ping + SETTINGS_ACK + data
    want = PREFACE + frame(SETTINGS, 0, 0, b"\0\x04\0\x01\0\0") + ping + SETTINGS_ACK + data
    for size in (1, 5, 9, 24, 1000):
        f = DropFirstSettingsAck(preface=True)
        out = b"".join(f.feed(stream[i : i + size]) for i in range(0, len(stream), size))
        assert out == want, size
    f = DropFirstSettingsAck()
    assert f.feed(SERVER_SETTINGS + SETTINGS_ACK + data) == SERVER_SETTINGS + data
