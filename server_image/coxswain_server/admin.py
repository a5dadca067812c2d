"""Admin endpoints: read and set traffic weights, load and unload versions at run time.

They need their own bearer token (--admin-token-file), never the clients' one; without it
they answer 403, so a server is never open to re-routing by accident. Pods the operator
makes run with admin off: the operator changes weights through the traffic file.
"""

from __future__ import annotations

import re

import orjson

from coxswain.artifacts.manifest import VERSION_PATTERN
from coxswain_server.auth import Credentials
from coxswain_server.errors import BadRequest, MethodNotAllowed, ModelLoadError
from coxswain_server.http_io import Receive, Scope, Send, authorization, read_body, send_response
from coxswain_server.traffic import parse_traffic_document
from coxswain_server.versions import ModelVersions


def allow(scope: Scope, *methods: str) -> None:
    if scope["method"] not in methods:
        raise MethodNotAllowed(f"{scope['method']} is not allowed here; use {' or '.join(methods)}")


class AdminEndpoints:
    def __init__(
        self, versions: ModelVersions, credentials: Credentials, max_body: int, read_timeout: float
    ) -> None:
        self._versions = versions
        self._credentials = credentials
        self._max_body = max_body
        self._read_timeout = read_timeout

    def _check(self, scope: Scope) -> None:
        self._credentials.check_admin(authorization(scope))

    def _state(self) -> bytes:
        return orjson.dumps(
            {"weights": self._versions.split.weights, "versions": self._versions.versions_state()}
        )

    async def traffic(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        """GET: the weights and versions. PUT {"weights": {...}}: switch to them (versions loaded)."""
        self._check(scope)
        allow(scope, "GET", "PUT")
        if scope["method"] == "PUT":
            body, _ = await read_body(scope, receive, self._max_body, self._read_timeout)
            try:
                weights = parse_traffic_document(orjson.loads(body), "the request body")
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise BadRequest(str(exc)) from None
            await self._versions.set_weights(weights, load_missing=False, unload_others=False)
        await send_response(send, 200, self._state())

    async def load(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        self._check(scope)
        allow(scope, "POST")
        version = _version_name(version)
        try:
            await self._versions.load(version)
        except ModelLoadError as exc:
            raise BadRequest(f"version {version} was not loaded: {exc}") from None
        await send_response(send, 200, self._state())

    async def unload(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        self._check(scope)
        allow(scope, "POST")
        await self._versions.unload(_version_name(version))
        await send_response(send, 200, self._state())


def _version_name(version: str | None) -> str:
    """A version name as the repository allows it (it starts with a letter or digit: never
    `..`, so the version's directory stays inside the model's)."""
    if version is None or not re.fullmatch(VERSION_PATTERN, version):
        raise BadRequest(f"version {version!r} is not a valid version name ({VERSION_PATTERN})")
    return version
