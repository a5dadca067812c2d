"""Kubernetes Events for the user: what happened and what to do, posted through kopf's queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf


def post(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Queue an Event on `obj` (any object with apiVersion, kind and metadata); never blocks."""
    # kopf accepts any mapping with metadata; its annotation names its own Body class.
    kopf.event(cast(kopf.Body, obj), type=type_, reason=reason, message=message[:1024])
