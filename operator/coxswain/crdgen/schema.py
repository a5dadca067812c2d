"""Pydantic JSON schema -> Kubernetes structural OpenAPI v3 schema.

Kubernetes accepts a subset of OpenAPI v3.0 (a "structural" schema): no `$ref`, a `type`
on every node, no `anyOf`/`oneOf` carrying types, `additionalProperties` never next to
`properties`, OpenAPI 3.0's boolean `exclusiveMinimum`. Pydantic speaks JSON Schema 2020-12.
This module bridges the two so that the models stay the one description of the API.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

JsonSchema = dict[str, Any]

# JSON Schema keys with no meaning for Kubernetes (or that it refuses).
_DROPPED_KEYS = frozenset({"title", "$defs", "discriminator", "examples", "$schema"})


class UnsupportedSchema(ValueError):
    """A model uses a JSON schema construct that has no structural OpenAPI equivalent."""


def _compact_default(value: Any) -> Any:
    # A default object is written in full: the API server checks a default against the CEL
    # rules as it stands, without filling the nested defaults first, so `{}` would fail a
    # rule such as `self.minReplicas <= self.maxReplicas`.
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, list | tuple):
        return [_compact_default(v) for v in value]
    return value


class KubernetesJsonSchema(GenerateJsonSchema):
    """Pydantic's generator, with model-valued defaults written as Kubernetes objects."""

    def encode_default(self, dft: Any) -> Any:
        return super().encode_default(_compact_default(dft))


def pydantic_schema(model: type[BaseModel]) -> JsonSchema:
    """The model's JSON schema as pydantic makes it (camelCase names, validation mode)."""
    return model.model_json_schema(by_alias=True, mode="validation", schema_generator=KubernetesJsonSchema)


def _merge(base: JsonSchema, extra: JsonSchema) -> JsonSchema:
    """Put the keys of a referring node (description, default, rules) over the referred schema."""
    merged = dict(base)
    for key, value in extra.items():
        if key == "x-kubernetes-validations" and key in merged:
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    return merged


def _resolve(node: JsonSchema, defs: dict[str, JsonSchema], path: str) -> JsonSchema:
    """Replace `$ref`, single-element `allOf` and `X | None` by the schema they stand for."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve(_merge(defs[name], rest), defs, path)
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _resolve(_merge(node["allOf"][0], rest), defs, path)
    if "anyOf" in node:
        choices = [c for c in node["anyOf"] if c != {"type": "null"}]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(choices) == 1:
            # An optional field: leaving it out is how a Kubernetes object says "none".
            if rest.get("default", ...) is None:
                del rest["default"]
            return _resolve(_merge(choices[0], rest), defs, path)
        raise UnsupportedSchema(f"{path}: a union of {len(choices)} types cannot be a structural schema")
    return node


def to_structural(node: JsonSchema, defs: dict[str, JsonSchema], path: str = "") -> JsonSchema:
    """Convert one pydantic schema node (and everything below it) to structural OpenAPI v3."""
    node = _resolve(node, defs, path)
    if "prefixItems" in node or "oneOf" in node or "not" in node:
        raise UnsupportedSchema(f"{path}: tuples, oneOf and not have no structural form; use a list or rules")
    out: JsonSchema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out[key] = {name: to_structural(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = to_structural(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict) and value:
                out[key] = to_structural(value, defs, f"{path}{{}}")
            elif value is True or value == {}:
                # dict[str, Any]: free-form, kept as the user wrote it.
                out["x-kubernetes-preserve-unknown-fields"] = True
            # `False` (extra="forbid") is how structural schemas behave anyway: unknown fields
            # are pruned, and Kubernetes refuses additionalProperties: false outright.
        elif key == "required":
            out[key] = sorted(value)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020-12 gives the bound; OpenAPI 3.0 a flag beside minimum/maximum.
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string"):
        # The API server ignores `pattern` here (the value may be an integer); the model
        # carries a CEL rule for the string form instead.
        out.pop("type", None)
        out.pop("pattern", None)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "default" in out and out["default"] is None:
        del out["default"]
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise UnsupportedSchema(f"{path}: no type; every structural schema node needs one")
    return out


def structural_schema(model: type[BaseModel]) -> JsonSchema:
    """The structural OpenAPI v3 schema of a model, all references inlined."""
    raw = pydantic_schema(model)
    defs = raw.get("$defs", {})
    return to_structural(raw, defs, model.__name__)
