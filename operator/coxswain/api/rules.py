"""Cross-field rules declared once, enforced twice.

A model lists its rules in a `rules` class variable. Each rule carries the CEL expression
that the CRD generator writes into the schema as `x-kubernetes-validations` (so the API
server refuses a bad object) and, for rules that need no old object, the same check in
Python (so the trainer and the operator refuse it when they parse a spec by themselves).
Keeping both next to each other is what stops the two from drifting apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RuleReason(StrEnum):
    """The `reason` an API server reports for a failed rule (Kubernetes' field error types)."""

    INVALID = "FieldValueInvalid"
    FORBIDDEN = "FieldValueForbidden"
    REQUIRED = "FieldValueRequired"
    DUPLICATE = "FieldValueDuplicate"


@dataclass(frozen=True)
class CelRule:
    """One `x-kubernetes-validations` entry.

    `rule` is evaluated with `self` bound to the object the model describes (and `oldSelf`
    to its previous value on updates, which makes it a transition rule). `message` is what
    the user reads: it names the field and what is allowed. `field_path` (relative, starting
    with a dot) points the error at the field the user must change. `check` is the Python
    twin of `rule`, taking the parsed model; `None` for transition rules, which need the old
    object that only the API server has.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: RuleReason = RuleReason.INVALID
    check: Callable[[Any], bool] | None = None

    @property
    def is_transition(self) -> bool:
        return "oldSelf" in self.rule

    def to_schema(self) -> dict[str, str]:
        """The entry as Kubernetes expects it in `x-kubernetes-validations`."""
        entry = {"rule": self.rule, "message": self.message, "reason": str(self.reason)}
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        return entry


def immutable(alias: str, *, optional: bool = False) -> CelRule:
    """A transition rule on a parent object keeping the child field `alias` unchanged.

    The rule sits on the parent rather than on the field, because a rule on an optional
    field never runs when the field is added or removed; `optional` adds that check.
    """
    if optional:
        rule = f"has(self.{alias}) == has(oldSelf.{alias}) && (!has(self.{alias}) || self.{alias} == oldSelf.{alias})"
    else:
        rule = f"self.{alias} == oldSelf.{alias}"
    return CelRule(
        rule=rule,
        message=f"{alias} is immutable; create a new object to change it",
        field_path=f".{alias}",
        reason=RuleReason.INVALID,
    )
