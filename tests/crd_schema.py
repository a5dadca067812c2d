"""Validate objects against the generated CRDs like the API server: prune unknown fields,
drop nulls, apply defaults, check the OpenAPI schema, then evaluate the CEL rules."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cel_eval import FieldError, Schema, evaluate_rules

ROOT = Path(__file__).resolve().parents[1]
CRD_FILES = {
    "TrainingJob": ROOT / "crds" / "trainingjobs.coxswain.dev.yaml",
    "ModelService": ROOT / "crds" / "modelservices.coxswain.dev.yaml",
}


@cache
def crd(kind: str) -> dict[str, Any]:
    """The generated CRD of `kind` as stored in git."""
    loaded: dict[str, Any] = yaml.safe_load(CRD_FILES[kind].read_text())
    return loaded


def openapi_schema(kind: str) -> Schema:
    """The kind's openAPIV3Schema."""
    schema: Schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _has_own_fields(schema: Schema) -> bool:
    return "properties" in schema or isinstance(schema.get("additionalProperties"), dict)


def prune(value: Any, schema: Schema) -> Any:
    """Drop fields the schema does not know (unless it preserves them) and non-nullable nulls."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and not _has_own_fields(schema):
            return value
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, sub in value.items():
            sub_schema = props.get(key, extra if isinstance(extra, dict) else None)
            if sub_schema is None:
                if schema.get("x-kubernetes-preserve-unknown-fields"):
                    out[key] = sub
                continue
            if sub is None and not sub_schema.get("nullable"):
                continue
            out[key] = prune(sub, sub_schema)
        return out
    if isinstance(value, list) and "items" in schema:
        return [prune(v, schema["items"]) for v in value]
    return value


def apply_defaults(value: Any, schema: Schema) -> Any:
    """Fill absent fields that have a default, at every level."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = dict(value)
        for key, sub_schema in props.items():
            if key not in out and "default" in sub_schema:
                out[key] = copy.deepcopy(sub_schema["default"])
        extra = schema.get("additionalProperties")
        for key, sub in out.items():
            sub_schema = props.get(key, extra if isinstance(extra, dict) else None)
            if sub_schema is not None:
                out[key] = apply_defaults(sub, sub_schema)
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def to_json_schema(schema: Schema) -> Schema:
    """OpenAPI v3.0 + Kubernetes extensions -> a JSON Schema draft 4 document (whose boolean
    exclusiveMinimum/exclusiveMaximum are OpenAPI 3.0's)."""
    out: Schema = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key.startswith("x-kubernetes-") or key in ("default", "description", "nullable"):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    return out


@cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(to_json_schema(openapi_schema(kind)))


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _schema_errors(kind: str, obj: dict[str, Any]) -> list[FieldError]:
    errors = []
    for error in _validator(kind).iter_errors(obj):
        path = _path(error.absolute_path)
        if error.validator == "required":
            missing = [p for p in error.validator_value if p not in error.instance]
            for name in missing:
                errors.append(FieldError(f"{path}.{name}" if path else name, "Required value"))
        else:
            errors.append(FieldError(path, error.message))
    return errors


def admit(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server would store it (pruned and defaulted), before validation."""
    schema = openapi_schema(obj["kind"])
    return apply_defaults(prune(obj, schema), schema)


def validate(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[FieldError]:
    """Every error the API server would report creating `obj` (or updating `old` to `obj`)."""
    kind = obj["kind"]
    new = admit(obj)
    errors = _schema_errors(kind, new)
    old_admitted = admit(old) if old is not None else None
    errors += evaluate_rules(openapi_schema(kind), new, old_admitted)
    return errors
