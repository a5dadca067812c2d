"""Which of a Service's EndpointSlices is the operator's activator slice (the planner deletes it
when a pod is ready, so taking the endpointslice controller's slice for it would delete that)."""

from __future__ import annotations

from typing import Any

from coxswain.modelservice.controller import activator_slice


def _slice(name: str) -> dict[str, Any]:
    return {"kind": "EndpointSlice", "metadata": {"name": name}}


def test_the_endpointslice_controllers_slice_is_never_taken_for_ours() -> None:
    key = ("ns", "digits")
    controllers = _slice("digits-x7k2p")
    assert activator_slice({key: [controllers]}, key) is None
    ours = _slice("digits-activator")
    assert activator_slice({key: [controllers, ours]}, key) is ours
    assert activator_slice({}, key) is None
