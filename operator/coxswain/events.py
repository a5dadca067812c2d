"""Kubernetes Events for the user: what happened and what to do, posted through kopf's queue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf


@dataclass(frozen=True)
class Event:
    """An Event a planner decided on; the runtime posts it on the object after the actions."""

    type: str  # Normal | Warning
    reason: str
    message: str


def post(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Queue an Event on `obj` (any object with apiVersion, kind and metadata); never blocks."""
    # kopf accepts any mapping with metadata; its annotation names its own Body class.
    kopf.event(cast(kopf.Body, obj), type=type_, reason=reason, message=message[:1024])
