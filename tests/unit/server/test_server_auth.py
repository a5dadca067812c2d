"""Credentials, protocol-neutral: the admin token is its own, never the inference token."""

from __future__ import annotations

import pytest

from coxswain_server.auth import Credentials
from coxswain_server.errors import Forbidden, Unauthorized

pytestmark = pytest.mark.unit


def test_admin_is_off_without_its_own_token_whatever_the_inference_token() -> None:
    credentials = Credentials("inference", None)
    with pytest.raises(Forbidden, match="admin endpoints are off"):
        credentials.check_admin(b"Bearer inference")
    credentials.check_inference(b"Bearer inference")
    with pytest.raises(Unauthorized):
        credentials.check_inference(None)


def test_each_token_opens_only_its_own_endpoints() -> None:
    credentials = Credentials("inference", "admin")
    credentials.check_admin(b"Bearer admin")
    with pytest.raises(Unauthorized, match="not valid"):
        credentials.check_admin(b"Bearer inference")
    with pytest.raises(Unauthorized, match="not valid"):
        credentials.check_inference(b"Bearer admin")
    with pytest.raises(Unauthorized, match="admin token"):
        credentials.check_admin(None)


@pytest.mark.parametrize("token", ["same", "jeton-été"])
def test_the_same_token_for_both_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="must differ"):
        Credentials(token, token)


def test_no_inference_token_means_inference_is_open_but_admin_still_needs_its_own() -> None:
    credentials = Credentials(None, "admin")
    credentials.check_inference(None)
    with pytest.raises(Unauthorized):
        credentials.check_admin(None)
