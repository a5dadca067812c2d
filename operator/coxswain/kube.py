"""The operator's Kubernetes client: lightkube (async, typed) plus our two custom resources."""

from __future__ import annotations

from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource

from coxswain.api import (
    GROUP,
    MODELSERVICE_KIND,
    MODELSERVICE_PLURAL,
    TRAININGJOB_KIND,
    TRAININGJOB_PLURAL,
    VERSION,
)

FIELD_MANAGER = "coxswain"

TRAININGJOB_RESOURCE = create_namespaced_resource(GROUP, VERSION, TRAININGJOB_KIND, TRAININGJOB_PLURAL)
MODELSERVICE_RESOURCE = create_namespaced_resource(GROUP, VERSION, MODELSERVICE_KIND, MODELSERVICE_PLURAL)


def make_client() -> AsyncClient:
    """In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
    return AsyncClient(field_manager=FIELD_MANAGER)


def is_not_found(exc: ApiError) -> bool:
    return exc.status.code == 404


def is_namespace_terminating(exc: ApiError) -> bool:
    """403 for a create in a namespace being deleted: retrying can only fail the same way."""
    details = exc.status.details
    causes = (details.causes if details else None) or []
    return exc.status.code == 403 and any(c.reason == "NamespaceTerminating" for c in causes)


def is_conflict(exc: ApiError) -> bool:
    """AlreadyExists (409): an earlier pass made it."""
    return exc.status.code == 409
