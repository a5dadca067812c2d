"""Bearer tokens, protocol-neutral: the inference token and the admin token are separate
credentials. Admin is off unless its own token is configured: it never falls back to the
inference token, which every client holds (changing weights bypasses canary analysis, and
unloading versions takes the service down). A front end passes the `authorization` value
it received (HTTP header, gRPC metadata) as bytes, or None when there was none."""

from __future__ import annotations

import hmac

from coxswain_server.errors import Forbidden, Unauthorized


def _bearer(token: str | None) -> bytes | None:
    return b"Bearer " + token.encode() if token else None


class Credentials:
    def __init__(self, inference_token: str | None, admin_token: str | None) -> None:
        if inference_token and admin_token and hmac.compare_digest(inference_token, admin_token):
            raise ValueError(
                "the admin token must differ from the inference token: every client holds the inference token, "
                "and the admin token changes weights and unloads versions"
            )
        self._inference = _bearer(inference_token)
        self._admin = _bearer(admin_token)

    @property
    def inference_required(self) -> bool:
        return self._inference is not None

    @property
    def admin_on(self) -> bool:
        return self._admin is not None

    def check_inference(self, authorization: bytes | None) -> None:
        if self._inference is not None:
            _check(authorization, self._inference, "this endpoint needs Authorization: Bearer <token>")

    def check_admin(self, authorization: bytes | None) -> None:
        if self._admin is None:
            raise Forbidden(
                "admin endpoints are off: start the server with --admin-token-file to use them "
                "(the inference token never opens them)"
            )
        _check(authorization, self._admin, "admin endpoints need Authorization: Bearer <admin token>")


def _check(authorization: bytes | None, expected: bytes, missing: str) -> None:
    if authorization is None:
        raise Unauthorized(missing)
    if not hmac.compare_digest(authorization, expected):  # constant time
        raise Unauthorized("the bearer token is not valid")
