"""A pass reads our own later write until the watch delivers it."""

from __future__ import annotations

import pytest

from coxswain.own_writes import OwnWrites

pytestmark = pytest.mark.unit


def obj(rv: str, phase: str) -> dict[str, object]:
    return {"metadata": {"namespace": "ns", "name": "a", "resourceVersion": rv}, "status": {"phase": phase}}


def test_older_body_is_replaced_by_our_write_until_the_watch_catches_up() -> None:
    writes = OwnWrites()
    assert writes.freshest(obj("5", "Pending"))["status"] == {"phase": "Pending"}
    writes.remember(obj("7", "Restarting"))
    assert writes.freshest(obj("5", "Running"))["status"] == {"phase": "Restarting"}
    assert writes.freshest(obj("7", "Restarting"))["metadata"]["resourceVersion"] == "7"  # type: ignore[index]
    assert writes.freshest(obj("6", "Running"))["status"] == {"phase": "Running"}, "forgotten once caught up"


def test_forget() -> None:
    writes = OwnWrites()
    writes.remember(obj("9", "Failed"))
    writes.forget(("ns", "a"))
    assert writes.freshest(obj("1", "Running"))["status"] == {"phase": "Running"}
