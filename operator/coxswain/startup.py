"""Operator start-up and shutdown: settings, shared clients, what kopf persists where."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from coxswain import metrics
from coxswain.modelservice.controller import ServingState
from coxswain.runtime import Runtime
from coxswain.trainingjob import controller as trainingjob_controller

log = logging.getLogger("coxswain.startup")

# kopf keeps its "operator paused" toggle set (peering: a replica of higher priority acts) in a
# local of `kopf.spawn_tasks` and hands it to its own tasks only; no handler gets it. Our
# workers are not kopf daemons, so kopf cannot stop them on a pause. The one place it passes
# through a module attribute is `kopf._core.engines.daemons.daemon_killer(operator_paused=...)`,
# called (not awaited) while kopf spawns its tasks, before the start-up handlers run: wrap it
# to capture the toggle set. Private API: if a kopf upgrade moves it, `configure` logs a warning
# and the workers act even while paused (what the daemons did not).
_captured: dict[str, Any] = {}


def _capture_operator_paused() -> None:
    try:
        from kopf._core.engines import daemons as kopf_daemons
    except ImportError:  # pragma: no cover - kopf moved it
        return
    original = getattr(kopf_daemons, "daemon_killer", None)
    if original is None or getattr(original, "coxswain_wrapped", False):
        return

    def daemon_killer(*args: Any, **kwargs: Any) -> Any:
        _captured["operator_paused"] = kwargs.get("operator_paused")
        return original(*args, **kwargs)

    daemon_killer.coxswain_wrapped = True  # type: ignore[attr-defined]
    kopf_daemons.daemon_killer = daemon_killer


_capture_operator_paused()


@kopf.on.startup()
async def configure(
    *, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
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
    # No limit on kopf's per-object workers (each exits when its object is idle): with a limit,
    # a restart that lists more objects of an indexed resource than the limit deadlocks, as
    # every worker waits for all objects to be indexed and the rest never get a worker (seen
    # with 300 TrainingJobs, which the ModelService controller indexes, and a limit of 200).
    settings.batching.worker_limit = None
    runtime = memo["runtime"] = Runtime.create()
    # kopf injects its indexes (live views) by their function's name, also into start-up handlers.
    for index in ("trainingjob_jobs", "trainingjob_pods", "trainingjob_workloads"):
        runtime.indexes[index] = kwargs[index]
    runtime.paused = _captured.get("operator_paused")
    if runtime.paused is None and not settings.peering.standalone:
        log.warning(
            "cannot see kopf's peering pause (kopf changed?): TrainingJob workers act even while paused"
        )
    runtime.start(lambda key: trainingjob_controller.process(runtime, key), trainingjob_controller.WORKERS)
    # coxswain_reconcile_pending: TrainingJobs queued and waiting for a worker.
    metrics.RECONCILE_QUEUE.labels("TrainingJob").set_function(lambda: float(len(runtime.queue)))
    metrics.watch_reconcile_pending("ModelService", ServingState.of(memo).wakers)
    logger.info("coxswain operator started")


@kopf.on.cleanup()
async def close(*, memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get("runtime")
    if isinstance(runtime, Runtime):
        await runtime.close()
