"""Carry out a plan against the API server: idempotent creates, deletes and patches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.batch_v1 import Job
from lightkube.types import CascadeType, PatchType

from coxswain.api.trainingjob import TrainingJob
from coxswain.kube import TRAININGJOB_RESOURCE, is_not_found
from coxswain.ownership import apply_owned
from coxswain.trainingjob import builders, naming
from coxswain.trainingjob.planner import Action, ActionKind, Plan

log = logging.getLogger(__name__)


async def _create_or_replace(client: AsyncClient, obj: dict[str, Any], replace: bool) -> None:
    # An existing object of the name is updated (replace) or left (an earlier pass made it)
    # only when it is ours; another's raises ownership.NameConflict (never taken over).
    await apply_owned(client, obj, update=replace)


Made = Callable[[dict[str, Any]], None]


async def execute(
    client: AsyncClient,
    tj: TrainingJob,
    plan: Plan,
    log_: logging.Logger | logging.LoggerAdapter[Any],
    made: Made | None = None,
) -> None:
    """Write the status first, then act (see planner: a restart is recorded before teardown).

    `made` is told of each Job this pass created, as the API server returned it.
    """
    ns, name = tj.metadata.namespace or "default", tj.metadata.name or ""
    # Actions see the status this pass decided (the handoff needs the exported model just read).
    current = tj.model_copy(update={"status": plan.status})
    # Creates that follow each other go out together (a new job's ConfigMap and Service: one
    # round trip instead of two, then the Job); deletes, patches and the handoff keep their order.
    batch: list[Action] = []
    for action in [*plan.actions, None]:
        if action is not None and action.kind in _CREATES:
            batch.append(action)
            continue
        if batch:
            results = await asyncio.gather(
                *(
                    _execute_one(client, current, ns, name, a, log_, plan.checkpoint_claim, made)
                    for a in batch
                ),
                return_exceptions=True,
            )
            batch = []
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        if action is not None:
            await _execute_one(client, current, ns, name, action, log_, plan.checkpoint_claim, made)


# The Job is not among them: its pods read the ConfigMap and resolve through the Service, so
# it is made only once both are ours (a same-named object of someone else's is a NameConflict,
# and a gang must never start on a foreign ConfigMap).
_CREATES = (
    ActionKind.ENSURE_CONFIG,
    ActionKind.CREATE_CONFIG,
    ActionKind.ENSURE_SERVICE,
)


async def _execute_one(
    client: AsyncClient,
    tj: TrainingJob,
    ns: str,
    name: str,
    action: Action,
    log_: logging.Logger | logging.LoggerAdapter[Any],
    plan_claim: str | None = None,
    made: Made | None = None,
) -> None:
    try:
        if action.kind in (ActionKind.ENSURE_CONFIG, ActionKind.CREATE_CONFIG):
            replace = action.kind == ActionKind.ENSURE_CONFIG
            await _create_or_replace(client, builders.build_config_map(tj), replace=replace)
        elif action.kind == ActionKind.ENSURE_CHECKPOINT_CLAIM:
            if await apply_owned(client, builders.build_checkpoint_claim(tj), update=False):
                log_.info("created PersistentVolumeClaim %s for checkpoints", action.name)
        elif action.kind == ActionKind.ENSURE_SERVICE:
            await _create_or_replace(client, builders.build_service(tj), replace=False)
        elif action.kind == ActionKind.CREATE_JOB:
            # AlreadyExists means an earlier pass (maybe of a killed operator) made it: fine.
            job = builders.build_job(tj, action.attempt, plan_claim)
            created = await apply_owned(client, job, update=False)
            if created is not None:
                log_.info("created Job %s (attempt %d, %d pods)", action.name, action.attempt, tj.spec.nodes)
                if made is not None:
                    made(created)
        elif action.kind == ActionKind.DELETE_JOB:
            # Foreground: the Job stays until its pods are gone, and the planner waits for it
            # before starting the next attempt.
            await client.delete(Job, action.name, namespace=ns, cascade=CascadeType.FOREGROUND)
            log_.info("deleting Job %s and its pods", action.name)
        elif action.kind in (ActionKind.SUSPEND_JOB, ActionKind.RESUME_JOB):
            suspend = action.kind == ActionKind.SUSPEND_JOB
            await client.patch(
                Job, action.name, {"spec": {"suspend": suspend}}, namespace=ns, patch_type=PatchType.MERGE
            )
        elif action.kind == ActionKind.DELETE_TRAININGJOB:
            await client.delete(TRAININGJOB_RESOURCE, name, namespace=ns, cascade=CascadeType.BACKGROUND)
            log_.info("deleted: ttlSecondsAfterFinished (%s s) passed", tj.spec.ttl_seconds_after_finished)
        elif action.kind == ActionKind.HANDOFF:
            from coxswain.trainingjob.handoff import hand_off

            await hand_off(client, tj, log_)
    except ApiError as exc:
        if is_not_found(exc) and action.kind in (ActionKind.DELETE_JOB, ActionKind.DELETE_TRAININGJOB):
            return
        raise


__all__ = ["execute", "naming"]
