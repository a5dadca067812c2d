"""Carry out a ModelService plan: idempotent applies, patches and deletes."""

from __future__ import annotations

import logging
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from coxswain.api.modelservice import ModelService
from coxswain.kube import MODELSERVICE_RESOURCE, is_not_found
from coxswain.modelservice.planner import Action, ActionKind, Plan
from coxswain.ownership import apply_owned

Logger = logging.Logger | logging.LoggerAdapter[Any]


async def execute(client: AsyncClient, ms: ModelService, plan: Plan, log: Logger) -> dict[str, Any] | None:
    """Apply the plan's actions in order; returns the ModelService if an action rewrote it."""
    written: dict[str, Any] | None = None
    for action in plan.actions:
        result = await _execute_one(client, ms, action, log)
        if result is not None:
            written = result
    return written


async def _apply(client: AsyncClient, obj: dict[str, Any]) -> None:
    # Created, or server-side applied (our fields, our manager; fields others own, such as an
    # HPA's status or a user's annotations, stay) only over an object this ModelService
    # controls: another's of the same name raises ownership.NameConflict, never taken over.
    await apply_owned(client, obj, update=True)


async def _execute_one(
    client: AsyncClient, ms: ModelService, action: Action, log: Logger
) -> dict[str, Any] | None:
    ns, name = ms.metadata.namespace or "default", ms.metadata.name or ""
    kind = action.kind
    if kind in (ActionKind.ENSURE_SERVICE, ActionKind.ENSURE_TRAFFIC, ActionKind.ENSURE_HPA):
        assert action.obj is not None
        await _apply(client, action.obj)
        if kind == ActionKind.ENSURE_TRAFFIC:
            log.info("traffic weights for the pods: %s", action.obj["data"])
    elif kind == ActionKind.ENSURE_DEPLOYMENT:
        assert action.obj is not None
        await _apply(client, action.obj)
        log.info(
            "applied Deployment %s (%d replicas)",
            action.obj["metadata"]["name"],
            action.obj["spec"]["replicas"],
        )
    elif kind == ActionKind.SCALE_DEPLOYMENT:
        await client.patch(
            Deployment,
            name,
            {"spec": {"replicas": action.replicas}},
            namespace=ns,
            patch_type=PatchType.MERGE,
        )
    elif kind == ActionKind.ENSURE_ACTIVATOR_SLICE:
        assert action.obj is not None
        await _apply(client, action.obj)
        log.info(
            "no server pod is ready: the Service routes HTTP to the activator (%s), which holds "
            "requests and wakes the service",
            ", ".join(e["addresses"][0] for e in action.obj["endpoints"]),
        )
    elif kind == ActionKind.DELETE_ACTIVATOR_SLICE:
        assert action.obj is not None
        try:
            await client.delete(EndpointSlice, action.obj["metadata"]["name"], namespace=ns)
            log.info("a server pod is ready: the Service routes straight to the server pods again")
        except ApiError as exc:
            if not is_not_found(exc):
                raise
    elif kind == ActionKind.DELETE_HPA:
        try:
            await client.delete(HorizontalPodAutoscaler, name, namespace=ns)
            log.info("deleted the HPA: autoscaling.mode is %s now", ms.spec.autoscaling.mode.value)
        except ApiError as exc:
            if not is_not_found(exc):
                raise
    elif kind == ActionKind.SET_REPLICAS:
        updated = await client.patch(
            MODELSERVICE_RESOURCE,
            name,
            {"spec": {"replicas": action.replicas}},
            namespace=ns,
            patch_type=PatchType.MERGE,
        )
        return dict(updated)
    return None
