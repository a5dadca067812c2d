"""The `NameConflict` condition: a child's name is taken by an object its owner does not control.

Found while acting (ownership.apply_owned raises NameConflict), so it is written after the
plan's status: set when an action met a conflict, cleared on the first pass whose actions
all went through. Level-triggered like the rest: the next pass tries again, and once the
other object is gone or renamed the condition clears.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lightkube import AsyncClient

from coxswain.api.common import Condition, ConditionStatus
from coxswain.conditions import get_condition, set_condition
from coxswain.ownership import NameConflict
from coxswain.runtime import Key, patch_status

TYPE = "NameConflict"
CONFLICT = "NameConflict"
RESOLVED = "NoConflict"
# How soon a pass looks again while a conflict stands (the other object may go any time).
RETRY_SECONDS = 15.0


def conditions_after(
    conditions: list[Condition], conflict: NameConflict | None, now: datetime, generation: int | None
) -> list[Condition] | None:
    """The conditions with NameConflict set or cleared; None when they need no change."""
    existing = get_condition(conditions, TYPE)
    if conflict is None:
        if existing is None or existing.status != ConditionStatus.TRUE:
            return None
        message = "every child's name belongs to this object"
        return set_condition(conditions, TYPE, False, RESOLVED, message, now, generation)
    if existing is not None and existing.status == ConditionStatus.TRUE and existing.message == str(conflict):
        return None
    return set_condition(conditions, TYPE, True, CONFLICT, str(conflict), now, generation)


async def record(
    client: AsyncClient,
    resource: Any,
    key: Key,
    conditions: list[Condition],
    conflict: NameConflict | None,
    now: datetime,
    generation: int | None,
) -> dict[str, Any] | None:
    """Write the condition if it changed; returns the object as stored then (None: unchanged)."""
    updated = conditions_after(conditions, conflict, now, generation)
    if updated is None:
        return None
    return await patch_status(client, resource, key, {"conditions": [c.to_dict() for c in updated]})
