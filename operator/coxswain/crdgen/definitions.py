"""CustomResourceDefinitions for TrainingJob and ModelService, built from the API models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from coxswain import api
from coxswain.api.modelservice import ModelService
from coxswain.api.trainingjob import TrainingJob
from coxswain.crdgen.schema import JsonSchema, structural_schema


@dataclass(frozen=True)
class ResourceKind:
    """Everything about one kind that is not in its pydantic model."""

    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: tuple[dict[str, Any], ...]
    scale: dict[str, str] | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{api.GROUP}"


def _column(name: str, type_: str, path: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": path, "description": description, **extra}


_AGE = _column("Age", "date", ".metadata.creationTimestamp", "Time since the object was created.")

TRAININGJOB = ResourceKind(
    model=TrainingJob,
    kind=api.TRAININGJOB_KIND,
    plural=api.TRAININGJOB_PLURAL,
    singular=api.TRAININGJOB_SINGULAR,
    short_names=api.TRAININGJOB_SHORT_NAMES,
    printer_columns=(
        _column("Phase", "string", ".status.phase", "Coarse state of the job."),
        _column("Progress %", "number", ".status.progress.percent", "Optimizer steps done, in percent."),
        _column("Loss", "number", ".status.progress.trainLoss", "Latest training loss."),
        _column("Restarts", "integer", ".status.restarts", "Whole-gang restarts charged to the budget."),
        _AGE,
    ),
)

MODELSERVICE = ResourceKind(
    model=ModelService,
    kind=api.MODELSERVICE_KIND,
    plural=api.MODELSERVICE_PLURAL,
    singular=api.MODELSERVICE_SINGULAR,
    short_names=api.MODELSERVICE_SHORT_NAMES,
    printer_columns=(
        _column("URL", "string", ".status.url", "In-cluster URL of the service."),
        _column("Ready", "integer", ".status.readyReplicas", "Replicas ready to answer."),
        _column("Desired", "integer", ".spec.replicas", "Replicas wanted by the autoscaler or HPA."),
        _column("Stable", "string", ".spec.versions.stable", "Stable model version."),
        _column("Canary", "string", ".spec.versions.canary", "Canary model version."),
        _AGE,
    ),
    scale={
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    },
)

KINDS: tuple[ResourceKind, ...] = (TRAININGJOB, MODELSERVICE)


def openapi_schema(kind: ResourceKind) -> JsonSchema:
    """The kind's openAPIV3Schema: the model's schema with the envelope Kubernetes owns."""
    schema = structural_schema(kind.model)
    properties = schema["properties"]
    # apiVersion, kind and metadata belong to the API server; it refuses restrictions on them
    # beyond these (and validates metadata itself).
    properties["apiVersion"] = {
        "type": "string",
        "description": "Versioned schema of this object: coxswain.dev/v1alpha1.",
    }
    properties["kind"] = {"type": "string", "description": f"Kind of this object: {kind.kind}."}
    # metadata.name is the one field of metadata a CRD may restrict: its length bound keeps the
    # cost of the name rule (the model's `x-kubernetes-validations`) within the API server's budget.
    name_rule = next(
        (r for r in schema.get("x-kubernetes-validations", []) if r.get("fieldPath") == ".metadata.name"),
        None,
    )
    metadata: JsonSchema = {"type": "object"}
    if name_rule is not None:
        metadata["properties"] = {"name": {"type": "string", "maxLength": 253}}
    properties["metadata"] = metadata
    schema["required"] = ["spec"]
    return schema


def custom_resource_definition(kind: ResourceKind) -> dict[str, Any]:
    """A complete apiextensions.k8s.io/v1 CustomResourceDefinition for one kind."""
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale is not None:
        subresources["scale"] = dict(kind.scale)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/name": "coxswain", "app.kubernetes.io/part-of": "coxswain"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [api.CATEGORY],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                    "subresources": subresources,
                    "additionalPrinterColumns": [dict(c) for c in kind.printer_columns],
                }
            ],
        },
    }
