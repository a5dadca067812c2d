"""Cluster-wide facts a pass needs, kept by watches: the default StorageClass (checkpoint
claims) and each namespace's enforced Pod Security level (hostPath refused up front).

Both are kopf indexes (no list per pass); the chart's RBAC grants list/watch on
StorageClasses and namespaces, nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from coxswain.tenancy import POD_SECURITY_LABEL

DEFAULT_CLASS_ANNOTATIONS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)
_DEFAULTS = ("", "default-storage-class")


@kopf.index("storage.k8s.io", "v1", "storageclasses")
async def default_storage_classes(
    *, name: str, annotations: kopf.Annotations, **_: Any
) -> dict[tuple[str, str], str] | None:
    if any(annotations.get(a) == "true" for a in DEFAULT_CLASS_ANNOTATIONS):
        return {_DEFAULTS: name}
    return None


@kopf.index("", "v1", "namespaces")
async def namespace_pod_security(
    *, name: str, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], str] | None:
    level = labels.get(POD_SECURITY_LABEL)
    return {("", name): str(level)} if level else None


def default_storage_class(index: Mapping[Any, Any]) -> str | None:
    """The default StorageClass (the alphabetically first when several claim to be: the
    API server then picks the newest, which a watch cannot tell; either way a claim binds)."""
    names = sorted(index.get(_DEFAULTS, []))
    return names[0] if names else None


def pod_security_level(index: Mapping[Any, Any], namespace: str) -> str | None:
    levels = list(index.get(("", namespace), []))
    return levels[0] if levels else None
