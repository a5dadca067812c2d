"""Bad manifests are refused by the generated schema and CEL rules, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crd_schema import validate
from invalid_manifests import (
    InvalidCase,
    InvalidUpdate,
    ValidUpdate,
    bases,
    format_path,
    invalid_manifests,
    invalid_updates,
    set_path,
    spec_schema,
    valid_updates,
)

pytestmark = pytest.mark.unit

CASES = invalid_manifests()
UPDATES = invalid_updates()
VALID_UPDATES = valid_updates()


def test_there_are_at_least_200_invalid_manifests() -> None:
    assert len(CASES) >= 200
    assert len({c.id for c in CASES}) == len(CASES)


def test_every_base_is_valid() -> None:
    for kind, name, manifest in bases():
        assert manifest["kind"] == kind
        assert not validate(manifest), f"base {name}: {[str(e) for e in validate(manifest)]}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_manifest_is_refused_naming_the_field(case: InvalidCase) -> None:
    errors = validate(case.manifest)
    assert errors, f"{case.id} was accepted"
    assert any(case.field in str(e) for e in errors), (
        f"{case.id}: no error names {case.field}: {[str(e) for e in errors]}"
    )


@pytest.mark.parametrize("case", UPDATES, ids=[c.id for c in UPDATES])
def test_update_of_immutable_field_is_refused(case: InvalidUpdate) -> None:
    assert not validate(case.old), "the old object must be valid"
    assert not validate(case.new), "the new object must be valid on its own (only the change is bad)"
    errors = validate(case.new, old=case.old)
    assert any(case.field in str(e) for e in errors), f"{case.id}: {[str(e) for e in errors]}"


@pytest.mark.parametrize("case", VALID_UPDATES, ids=[c.id for c in VALID_UPDATES])
def test_update_of_mutable_field_is_accepted(case: ValidUpdate) -> None:
    errors = validate(case.new, old=case.old)
    assert not errors, [str(e) for e in errors]


def _bounded_numbers() -> list[tuple[str, tuple[str | int, ...], dict[str, Any]]]:
    """(kind, path, schema) of every numeric spec field with a bound, in a base that has it."""
    found = []
    first_of_each_kind = {kind: base for kind, _, base in reversed(bases())}
    for kind, base in first_of_each_kind.items():
        stack: list[tuple[tuple[str | int, ...], dict[str, Any], Any]] = [
            (("spec",), spec_schema(kind)["properties"]["spec"], base["spec"])
        ]
        while stack:
            path, schema, value = stack.pop()
            for name, sub in schema.get("properties", {}).items():
                if isinstance(value, dict) and name in value:
                    if sub.get("type") in ("integer", "number") and ("minimum" in sub or "maximum" in sub):
                        found.append((kind, (*path, name), sub))
                    stack.append(((*path, name), sub, value[name]))
    return found


BOUNDED = _bounded_numbers()


def _out_of_range(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    choices = []
    integer = schema["type"] == "integer"
    if "minimum" in schema:
        low = schema["minimum"]
        below = low if schema.get("exclusiveMinimum") else (low - 1 if integer else low - 1e-6)
        choices.append(
            st.integers(min_value=-(2**63), max_value=int(below))
            if integer
            else st.floats(max_value=below, allow_nan=False)
        )
    if "maximum" in schema:
        high = schema["maximum"]
        above = high if schema.get("exclusiveMaximum") else (high + 1 if integer else high + 1e-6)
        choices.append(
            st.integers(min_value=int(above), max_value=2**63 - 1)
            if integer
            else st.floats(min_value=above, allow_infinity=False)
        )
    return st.one_of(*choices)


@st.composite
def out_of_range_manifests(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    kind, path, schema = draw(st.sampled_from(BOUNDED))
    base = next(m for k, _, m in bases() if k == kind)
    set_path(base, path, draw(_out_of_range(schema)))
    return base, format_path(path)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(out_of_range_manifests())
def test_random_out_of_range_numbers_are_refused(case: tuple[dict[str, Any], str]) -> None:
    manifest, field = case
    errors = validate(manifest)
    assert any(field in str(e) for e in errors), (field, [str(e) for e in errors])


_WRONG_TYPED = st.one_of(
    st.text(max_size=8).map(lambda s: "x" + s),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**63 - 1), max_size=2).map(
        lambda d: {**d, "k": 1}
    ),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(BOUNDED), _WRONG_TYPED)
def test_random_wrong_types_for_numbers_are_refused(
    target: tuple[str, tuple[str | int, ...], dict[str, Any]], value: Any
) -> None:
    kind, path, _ = target
    manifest = next(m for k, _, m in bases() if k == kind)
    set_path(manifest, path, value)
    errors = validate(manifest)
    assert any(format_path(path) in str(e) for e in errors), [str(e) for e in errors]


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=20).filter(lambda s: s not in {"auto", "nccl", "gloo"}))
def test_random_backend_names_are_refused_listing_the_allowed_values(name: str) -> None:
    manifest = next(m for k, _, m in bases() if k == "TrainingJob")
    manifest["spec"]["backend"] = name
    errors = [str(e) for e in validate(manifest) if e.path == "spec.backend"]
    assert errors and all(v in errors[0] for v in ("auto", "nccl", "gloo")), errors


def _rule_messages(kind: str, transition: bool) -> set[str]:
    found = set()
    stack = [spec_schema(kind)]
    while stack:
        node = stack.pop()
        for rule in node.get("x-kubernetes-validations", []):
            if ("oldSelf" in rule["rule"]) == transition:
                found.add(rule["message"])
        stack += list(node.get("properties", {}).values())
        if isinstance(node.get("items"), dict):
            stack.append(node["items"])
    return found


def test_every_rule_is_broken_by_some_case() -> None:
    create_messages = {e.message for c in CASES for e in validate(c.manifest)}
    update_messages = {e.message for u in UPDATES for e in validate(u.new, old=u.old)}
    for kind in ("TrainingJob", "ModelService"):
        assert _rule_messages(kind, transition=False) <= create_messages
        assert _rule_messages(kind, transition=True) <= update_messages
