"""Every error a client can cause or see, with its HTTP status, in one place.

Handlers raise these; the transport turns them into `{"error": message}` with the status
here. Anything else that escapes is a bug and becomes a 500 with a log line.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base: a message for the client and the HTTP status that goes with it."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServerError):
    """The body, shape, dtype or parameters do not fit the model's input schema."""

    status = 400


class Unauthorized(ServerError):
    status = 401


class Forbidden(ServerError):
    status = 403


class NotFound(ServerError):
    status = 404


class MethodNotAllowed(ServerError):
    status = 405


class Conflict(ServerError):
    """The request is valid but the server's state does not allow it now."""

    status = 409


class RequestTimeout(ServerError):
    """The request body did not arrive within the read deadline (a trickling client)."""

    status = 408


class PayloadTooLarge(ServerError):
    """The body is over the byte limit, or the request over the row limit."""

    status = 413


class UnsupportedMediaType(ServerError):
    status = 415


class Overloaded(ServerError):
    """The version's queue is full, or the server holds as many requests as it may; the
    client should retry after `retry_after` seconds."""

    status = 429

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InferenceFailed(ServerError):
    """The model raised on this request (run alone, so not because of its batch-mates)."""

    status = 500


class NotReady(ServerError):
    """The version exists but is still loading, or the server is draining."""

    status = 503


class ModelLoadError(Exception):
    """A version could not be loaded (tampered, incomplete, encrypted without key, bad format).

    Not an HTTP error: it stops start-up or an admin load, with this message for the user.
    """
