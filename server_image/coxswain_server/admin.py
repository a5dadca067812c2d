"""Admin endpoints: read and set traffic weights, load and unload versions at run time.

They need their own bearer token (or the clients' one); with neither configured they answer
403, so a server is never open to re-routing by accident.
"""

from __future__ import annotations

import orjson

from coxswain_server.errors import BadRequest, Forbidden, MethodNotAllowed, ModelLoadError
from coxswain_server.http_io import Receive, Scope, Send, check_bearer, read_body, send_response
from coxswain_server.traffic import parse_traffic_document
from coxswain_server.versions import ModelVersions


def allow(scope: Scope, *methods: str) -> None:
    if scope["method"] not in methods:
        raise MethodNotAllowed(f"{scope['method']} is not allowed here; use {' or '.join(methods)}")


class AdminEndpoints:
    def __init__(self, versions: ModelVersions, token: str | None, max_body: int) -> None:
        self._versions = versions
        self._expected = b"Bearer " + token.encode() if token else None
        self._max_body = max_body

    def _check(self, scope: Scope) -> None:
        if self._expected is None:
            raise Forbidden(
                "admin endpoints are off: start the server with --admin-token-file (or --auth-token-file) to use them"
            )
        check_bearer(scope, self._expected, "admin endpoints need Authorization: Bearer <admin token>")

    def _state(self) -> bytes:
        return orjson.dumps(
            {"weights": self._versions.split.weights, "versions": self._versions.versions_state()}
        )

    async def traffic(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        """GET: the weights and versions. PUT {"weights": {...}}: switch to them (versions loaded)."""
        self._check(scope)
        allow(scope, "GET", "PUT")
        if scope["method"] == "PUT":
            body, _ = await read_body(scope, receive, self._max_body)
            try:
                weights = parse_traffic_document(orjson.loads(body), "the request body")
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise BadRequest(str(exc)) from None
            await self._versions.set_weights(weights, load_missing=False, unload_others=False)
        await send_response(send, 200, self._state())

    async def load(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        self._check(scope)
        allow(scope, "POST")
        assert version is not None
        try:
            await self._versions.load(version)
        except ModelLoadError as exc:
            raise BadRequest(f"version {version} was not loaded: {exc}") from None
        await send_response(send, 200, self._state())

    async def unload(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        self._check(scope)
        allow(scope, "POST")
        assert version is not None
        await self._versions.unload(version)
        await send_response(send, 200, self._state())
