"""What one request may ask of the server, and how many it holds at once: the limits that
bound its memory. Protocol-neutral, so every front end (HTTP, gRPC) applies the same ones.

Memory a server can be made to hold, at most:
- request bodies: `max_concurrent_requests` x `max_body_bytes` (a compressed body also
  holds its decompressed copy, up to the same limit), because every request beyond
  `max_concurrent_requests` is refused before its body is read;
- model inputs: `max_request_rows` rows per request, `max_queue_rows` queued per version;
- responses: one copy of each output per request (an output named twice is refused).
"""

from __future__ import annotations

from coxswain_server.errors import Overloaded, PayloadTooLarge


def check_rows(rows: int, max_rows: int) -> None:
    """A request's rows against the per-request cap (default: the largest batch)."""
    if rows > max_rows:
        raise PayloadTooLarge(
            f"this request has {rows} rows; this server takes at most {max_rows} rows per request "
            "(--max-request-rows, default --max-batch-size): split it into smaller requests"
        )


class RequestGate:
    """At most `limit` requests open at once, counted from arrival (while their body is
    still being read) until the response is sent. Beyond it a request is refused at once,
    before its body is read, so bodies in memory stay bounded whatever clients do.

    Not the in-flight count the autoscaler reads: that one counts only requests whose body
    has arrived (a client trickling its body is no work for the model).
    """

    __slots__ = ("limit", "open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def enter(self) -> None:
        if self.open >= self.limit:
            raise Overloaded(
                f"the server is handling {self.open} requests, its limit (--max-concurrent-requests {self.limit}); "
                "retry shortly"
            )
        self.open += 1

    def leave(self) -> None:
        self.open -= 1
