"""Evaluate a CRD schema's `x-kubernetes-validations` rules the way the API server does.

Walks an object alongside its structural schema and evaluates every rule with cel-python,
`self` bound to the value at the rule's place (typed by the schema, so a `number` field is a
CEL double even when YAML wrote `1`), and `oldSelf` to the previous value for transition
rules on updates. Each failure is reported as `<path>: <message>`, the path extended by the
rule's `fieldPath`, as the API server would report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import celpy
from celpy import celtypes

Schema = dict[str, Any]


@dataclass(frozen=True)
class FieldError:
    """One refusal: the field path and the reason."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


_ENV = celpy.Environment()


@cache
def _program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule))


def to_cel(value: Any, schema: Schema) -> Any:
    """A JSON value as a CEL value of the type its schema gives it."""
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return celpy.json_to_cel(value)
    kind = schema.get("type")
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if kind == "number" and isinstance(value, int | float):
        return celtypes.DoubleType(float(value))
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            return celtypes.DoubleType(float(value))  # JSON decoding makes it a float as well
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, list):
        items = schema.get("items", {})
        return celtypes.ListType([to_cel(v, items) for v in value])
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", {})
        return celtypes.MapType(
            {celtypes.StringType(k): to_cel(v, props.get(k, extra)) for k, v in value.items()}
        )
    return celpy.json_to_cel(value)


def _join(path: str, field_path: str) -> str:
    if not field_path:
        return path
    return path + field_path if field_path.startswith((".", "[")) else f"{path}.{field_path}"


def _check_rules(schema: Schema, value: Any, old: Any, path: str) -> list[FieldError]:
    errors = []
    for entry in schema.get("x-kubernetes-validations", []):
        rule = entry["rule"]
        activation = {"self": to_cel(value, schema)}
        if "oldSelf" in rule:
            if old is None:
                continue  # transition rules run only on updates where the old value exists
            activation["oldSelf"] = to_cel(old, schema)
        where = _join(path, entry.get("fieldPath", ""))
        try:
            result = _program(rule).evaluate(activation)
        except celpy.CELEvalError as e:
            errors.append(FieldError(where, f"{entry['message']} (rule could not be evaluated: {e.args[0]})"))
            continue
        if isinstance(result, celpy.CELEvalError):
            errors.append(FieldError(where, f"{entry['message']} (rule could not be evaluated: {result})"))
        elif result is not True and result != celtypes.BoolType(True):
            errors.append(FieldError(where, entry["message"]))
    return errors


def evaluate_rules(schema: Schema, value: Any, old: Any = None, path: str = "") -> list[FieldError]:
    """Every failed rule in `value` (and below it), with `old` as the previous object."""
    if value is None:
        return []
    errors = _check_rules(schema, value, old, path)
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            sub_schema = props.get(key) if props is not None else None
            if sub_schema is None and isinstance(extra, dict):
                sub_schema = extra
            if sub_schema is None:
                continue
            sub_old = old.get(key) if isinstance(old, dict) else None
            errors += evaluate_rules(sub_schema, sub, sub_old, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and "items" in schema:
        # Items of an atomic list are not correlated with old items: no oldSelf below here.
        for i, item in enumerate(value):
            errors += evaluate_rules(schema["items"], item, None, f"{path}[{i}]")
    return errors
