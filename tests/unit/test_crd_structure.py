"""The generated CRDs are ones a kube-apiserver accepts and that read well in kubectl."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from crd_schema import crd, openapi_schema

pytestmark = pytest.mark.unit

KINDS = ["TrainingJob", "ModelService"]
Schema = dict[str, Any]


def nodes(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    for path, node in nodes(openapi_schema(kind)):
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "not", "prefixItems", "const", "title"):
            assert forbidden not in node, f"{kind}{path}: {forbidden} is not structural"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{kind}{path}: no type"
        assert not ("properties" in node and "additionalProperties" in node), f"{kind}{path}"
        assert node.get("additionalProperties") is not False, f"{kind}{path}: additionalProperties false"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{kind}{path}: {bound} must be OpenAPI 3.0's boolean"


@pytest.mark.parametrize("kind", KINDS)
def test_every_spec_field_has_a_description(kind: str) -> None:
    spec = openapi_schema(kind)["properties"]["spec"]
    missing = [p for p, n in nodes(spec, ".spec") if not n.get("description") and not p.endswith(("[]", "}"))]
    assert not missing, f"{kind}: no description on {missing}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_rule_names_what_is_allowed(kind: str) -> None:
    rules = [(p, r) for p, n in nodes(openapi_schema(kind)) for r in n.get("x-kubernetes-validations", [])]
    assert rules
    for path, rule in rules:
        assert rule["message"], f"{kind}{path}: rule {rule['rule']} has no message"
        assert rule["reason"] in {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired"}
        assert rule.get("fieldPath", ".").startswith("."), f"{kind}{path}: fieldPath must be relative"


@pytest.mark.parametrize("kind", KINDS)
def test_strings_and_lists_in_the_spec_are_bounded(kind: str) -> None:
    # CEL cost estimation multiplies by the largest size a value could have; bounded
    # values keep every rule inside the API server's budget.
    spec = openapi_schema(kind)["properties"]["spec"]
    for path, node in nodes(spec, ".spec"):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, f"{kind}{path}: string without maxLength"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{kind}{path}: list without maxItems"
        if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, f"{kind}{path}: map without maxProperties"


def test_trainingjob_names_subresources_and_columns() -> None:
    spec = crd("TrainingJob")["spec"]
    assert spec["group"] == "coxswain.dev"
    assert spec["names"]["shortNames"] == ["tj"]
    assert spec["names"]["categories"] == ["coxswain"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("Phase", ".status.phase"),
        ("Progress %", ".status.progress.percent"),
        ("Loss", ".status.progress.trainLoss"),
        ("Restarts", ".status.restarts"),
        ("Age", ".metadata.creationTimestamp"),
    ]


def test_modelservice_has_a_scale_subresource_and_columns() -> None:
    spec = crd("ModelService")["spec"]
    assert spec["names"]["shortNames"] == ["ms"]
    assert spec["names"]["categories"] == ["coxswain"]
    version = spec["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["URL", "Ready", "Desired", "Stable", "Canary", "Age"]


def test_conditions_are_a_map_list_keyed_by_type() -> None:
    for kind in KINDS:
        conditions = openapi_schema(kind)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        item = conditions["items"]
        assert set(item["properties"]) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }
        assert "type" in item["required"]


def test_free_form_custom_config_is_preserved() -> None:
    custom = openapi_schema("TrainingJob")["properties"]["spec"]["properties"]["task"]["properties"]["custom"]
    assert custom["properties"]["config"]["x-kubernetes-preserve-unknown-fields"] is True


def test_envelope_is_left_to_the_api_server() -> None:
    for kind in KINDS:
        props = openapi_schema(kind)["properties"]
        # Only metadata.name is described: the one field a CRD may restrict, bounded so the
        # name rule's CEL cost is known (the API server's own limit is 253).
        assert props["metadata"] == {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 253}},
        }
        assert openapi_schema(kind)["required"] == ["spec"]
        rules = [
            r
            for r in openapi_schema(kind)["x-kubernetes-validations"]
            if r.get("fieldPath") == ".metadata.name"
        ]
        assert len(rules) == 1 and "DNS-1035" in rules[0]["message"]
