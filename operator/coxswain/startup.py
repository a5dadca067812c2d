"""Operator start-up and shutdown: settings, shared clients, what kopf persists where."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from coxswain import metrics
from coxswain.modelservice.controller import ServingState
from coxswain.runtime import Runtime


@kopf.on.startup()
async def configure(
    *, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    # Our own Events say what happened; kopf's per-handler chatter would drown them.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = "coxswain.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="coxswain.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="coxswain.dev", key="last-handled-configuration"
    )
    # Watches are the source of truth; restart them now and then so a silently broken one heals.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # Many objects: let kopf batch work per object instead of one task per event.
    settings.batching.worker_limit = 200
    memo["runtime"] = Runtime.create()
    # coxswain_reconcile_pending: objects woken and waiting for their loop's next pass.
    metrics.watch_reconcile_pending("TrainingJob", memo["runtime"].wakers)
    metrics.watch_reconcile_pending("ModelService", ServingState.of(memo).wakers)
    logger.info("coxswain operator started")


@kopf.on.cleanup()
async def close(*, memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get("runtime")
    if isinstance(runtime, Runtime):
        await runtime.close()
