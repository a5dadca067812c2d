"""kopf wiring for ModelServices: watches wake one loop per service; the logic is elsewhere.

- `@kopf.index` keeps each service's pods and children (Deployment, Service, ConfigMap,
  HPA) and every TrainingJob in memory, so a pass lists nothing from the API server.
- Watch events of those objects and of the ModelService itself wake its loop. The loop
  also wakes every SCRAPE_INTERVAL seconds to read the servers' /metrics (pulled: server
  pods hold no API credentials) for the autoscaler and the canary analysis.
- kopf starts the loop (a daemon) for every ModelService, also after an operator restart,
  and cancels it when the object goes; children go by ownerReference garbage collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from lightkube import ApiError

from coxswain import events, metrics
from coxswain.api import GROUP, MODELSERVICE_PLURAL, TRAININGJOB_PLURAL, VERSION
from coxswain.api.common import ConditionStatus
from coxswain.api.conditions import ModelServiceConditionType as C
from coxswain.api.modelservice import AutoscalingMode, ModelService
from coxswain.conditions import get_condition
from coxswain.modelservice import naming
from coxswain.modelservice.executor import execute, patch_status
from coxswain.modelservice.planner import Memory, Observed, Plan, plan
from coxswain.modelservice.scrape import scrape, scrape_targets
from coxswain.own_writes import OwnWrites
from coxswain.runtime import Runtime

# Seconds between scrapes while the builtin autoscaler or a canary analysis needs them:
# with a 3 s period a load step is seen within 3 s and acted on in the same pass.
SCRAPE_INTERVAL = 3.0
LOAD_INTERVAL = 15.0  # hpa / none modes: scrape only for status.load
RESYNC_INTERVAL = 60.0
LABELS = {naming.LABEL_MODELSERVICE: kopf.PRESENT}

_POD_STATUS_KEYS = ("phase", "podIP", "conditions", "containerStatuses")


@dataclass
class ServingState:
    """The ModelService controller's share of kopf's memo (separate from the TrainingJob
    controller's: a ModelService and a TrainingJob often share a name)."""

    wakers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    memory: dict[tuple[str, str], Memory] = field(default_factory=dict)
    # Our own last write of each ModelService (see own_writes).
    written: OwnWrites = field(default_factory=OwnWrites)

    @staticmethod
    def of(memo: kopf.Memo) -> ServingState:
        state = memo.get("modelservice")
        if not isinstance(state, ServingState):
            state = ServingState()
            memo["modelservice"] = state
        return state

    def wake(self, namespace: str, name: str | None = None) -> None:
        for (ns, ms), event in list(self.wakers.items()):
            if ns == namespace and (name is None or ms == name):
                event.set()

    def forget(self, namespace: str, name: str) -> None:
        self.wakers.pop((namespace, name), None)
        self.memory.pop((namespace, name), None)
        self.written.forget((namespace, name))


def _slim(body: kopf.Body, status_keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Only what the planner reads: keeps the operator small with many pods."""
    meta = body.get("metadata", {})
    status = dict(body.get("status", {}) or {})
    spec = body.get("spec", {}) or {}
    return {
        "kind": body.get("kind"),
        "metadata": {
            "name": meta.get("name"),
            "annotations": {
                k: v
                for k, v in (meta.get("annotations", {}) or {}).items()
                if k == naming.ANNOTATION_SPEC_HASH
            },
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": {"replicas": spec.get("replicas")} if isinstance(spec, dict) else {},
        "data": dict(body.get("data", {}) or {}),
        "status": {k: status[k] for k in status_keys if k in status} if status_keys else status,
    }


def _child_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo
) -> dict[tuple[str, str], dict[str, Any]]:
    key = (namespace or "", labels[naming.LABEL_MODELSERVICE])
    ServingState.of(memo).wake(*key)
    return {key: _slim(body)}


@kopf.index("", "v1", "pods", labels=LABELS)
def modelservice_pods(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    key = (namespace or "", labels[naming.LABEL_MODELSERVICE])
    ServingState.of(memo).wake(*key)
    return {key: _slim(body, _POD_STATUS_KEYS)}


@kopf.index("apps", "v1", "deployments", labels=LABELS)
def modelservice_deployments(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return _child_index(namespace, labels, body, memo)


@kopf.index("", "v1", "services", labels=LABELS)
def modelservice_services(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return _child_index(namespace, labels, body, memo)


@kopf.index("", "v1", "configmaps", labels=LABELS)
def modelservice_configmaps(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return _child_index(namespace, labels, body, memo)


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=LABELS)
def modelservice_hpas(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return _child_index(namespace, labels, body, memo)


@kopf.index(GROUP, VERSION, TRAININGJOB_PLURAL)
def modelservice_trainingjobs(
    *, namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """A job's success is what a ModelService with trainingJobRef waits for: wake them."""
    ServingState.of(memo).wake(namespace or "")
    spec = body.get("spec", {}) or {}
    return {
        (namespace or "", name): {
            "spec": {"export": spec.get("export")},
            "status": {
                k: v
                for k, v in (body.get("status", {}) or {}).items()
                if k in ("phase", "exportedModel", "progress")
            },
        }
    }


@kopf.index(GROUP, VERSION, MODELSERVICE_PLURAL)
def modelservice_wakeup(*, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Spec changes (versions, replicas from `kubectl scale` or an HPA) take effect at once."""
    ServingState.of(memo).wake(namespace or "", name)


@kopf.on.delete(GROUP, VERSION, MODELSERVICE_PLURAL, optional=True)
def modelservice_deleted(
    *, namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    metrics.forget_modelservice(namespace or "", name)
    ServingState.of(memo).forget(namespace or "", name)
    logger.info(
        "ModelService deleted; its Deployment, pods, Service, ConfigMap and HPA are garbage-collected"
    )


def _first(
    index: kopf.Index[tuple[str, str], dict[str, Any]], key: tuple[str, str], kind: str
) -> dict[str, Any] | None:
    for obj in index.get(key, []):
        if obj.get("kind") in (kind, None):
            return obj
    return None


@kopf.daemon(GROUP, VERSION, MODELSERVICE_PLURAL, cancellation_timeout=5.0)
async def modelservice_loop(
    *,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    state = ServingState.of(memo)
    runtime = Runtime.of(memo)
    key = (namespace or "", name)
    wake = state.wakers.setdefault(key, asyncio.Event())
    while not stopped:
        wake.clear()
        delay = RESYNC_INTERVAL
        started = time.monotonic()
        try:
            delay = await reconcile(body, runtime, state, logger, key, kwargs)
        except ApiError as exc:
            metrics.RECONCILE_ERRORS.labels("ModelService").inc()
            logger.warning("reconcile failed, retrying in 5 s: %s", exc.status.message)
            delay = 5.0
        except ValueError as exc:
            metrics.RECONCILE_ERRORS.labels("ModelService").inc()
            logger.error("this ModelService does not parse (is the CRD older than the operator?): %s", exc)
        finally:
            metrics.RECONCILE_DURATION.labels("ModelService").observe(time.monotonic() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=delay)


async def reconcile(
    body: kopf.Body,
    runtime: Runtime,
    state: ServingState,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    key: tuple[str, str],
    indexes: dict[str, Any],
) -> float:
    """One pass; returns the seconds until the next pass is needed without a watch event."""
    raw = state.written.freshest(dict(body))
    if raw.get("metadata", {}).get("deletionTimestamp"):
        return RESYNC_INTERVAL
    ms = ModelService.model_validate(raw)
    pods = [p for p in indexes["modelservice_pods"].get(key, []) if p]
    ref = ms.spec.model.training_job_ref
    trainingjob = _first(indexes["modelservice_trainingjobs"], (key[0], ref.name), "") if ref else None
    targets = scrape_targets(pods)
    scraped_at = time.monotonic()
    samples = await scrape(runtime.http, targets) if targets else {}
    if len(samples) < len(targets):
        metrics.MODELSERVICE_SCRAPE_FAILURES.labels(*key).inc(len(targets) - len(samples))
    observed = Observed(
        deployment=_first(indexes["modelservice_deployments"], key, "Deployment"),
        service=_first(indexes["modelservice_services"], key, "Service"),
        traffic=_first(indexes["modelservice_configmaps"], key, "ConfigMap"),
        hpa=_first(indexes["modelservice_hpas"], key, "HorizontalPodAutoscaler"),
        pods=pods,
        trainingjob=trainingjob,
        samples=samples,
    )
    memory = state.memory.get(key) or Memory()
    result = plan(ms, observed, memory, datetime.now(UTC), time.monotonic())
    state.memory[key] = result.memory

    old_status = ms.status.to_dict() if ms.status else {}
    new_status = result.status.to_dict()
    if new_status != old_status:
        cleared = {k: None for k in old_status if k not in new_status}
        state.written.remember(await patch_status(runtime.client, ms, {**cleared, **new_status}))
    written = await execute(runtime.client, ms, result, logger)
    if written is not None:
        state.written.remember(written)
    if result.scale is not None and samples:
        metrics.MODELSERVICE_SCALE_DECISION_SECONDS.observe(time.monotonic() - scraped_at)
    for event in result.events:
        events.post(raw, event.type, event.reason, event.message)
        log = logger.warning if event.type == "Warning" else logger.info
        log("%s: %s", event.reason, event.message)
    _record_metrics(ms, result)

    auto = ms.spec.autoscaling
    analysing = ms.spec.versions.analysis is not None and ms.spec.versions.canary is not None
    if auto.mode == AutoscalingMode.BUILTIN or analysing:
        return SCRAPE_INTERVAL
    return LOAD_INTERVAL if pods else RESYNC_INTERVAL


def _record_metrics(ms: ModelService, result: Plan) -> None:
    ns, name = ms.metadata.namespace or "", ms.metadata.name or ""
    status = result.status
    metrics.MODELSERVICE_REPLICAS.labels(ns, name).set(status.replicas or 0)
    metrics.MODELSERVICE_READY_REPLICAS.labels(ns, name).set(status.ready_replicas or 0)
    desired = result.scale.to if result.scale is not None else ms.spec.replicas
    if desired is not None:
        metrics.MODELSERVICE_DESIRED_REPLICAS.labels(ns, name).set(desired)
    ready = get_condition(status.conditions, C.READY)
    metrics.MODELSERVICE_READY.labels(ns, name).set(
        1.0 if ready is not None and ready.status == ConditionStatus.TRUE else 0.0
    )
    if status.load is not None:
        metrics.MODELSERVICE_INFLIGHT.labels(ns, name).set(status.load.inflight or 0.0)
        if status.load.rps is not None:
            metrics.MODELSERVICE_RPS.labels(ns, name).set(status.load.rps)
    # The first replica count of a new service is not a decision about load.
    if result.scale is not None and ms.spec.replicas is not None and result.scale.to != result.scale.from_:
        direction = "up" if result.scale.to > result.scale.from_ else "down"
        metrics.MODELSERVICE_SCALE_DECISIONS.labels(ns, name, direction).inc()
    canary = ms.spec.versions.canary
    pct = result.weights.get(canary, 0) if canary else 0
    metrics.MODELSERVICE_CANARY_TRAFFIC.labels(ns, name).set(pct)
    if result.rolled_back:
        metrics.MODELSERVICE_CANARY_ROLLBACKS.labels(ns, name).inc()
    if any(e.reason == "CanaryPromoted" for e in result.events):
        metrics.MODELSERVICE_CANARY_PROMOTIONS.labels(ns, name).inc()
