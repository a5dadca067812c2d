"""Decide, from what is observed, a ModelService's status and the actions to take.

Pure, apart from `Memory`, which is handed in and handed back: the autoscaler's
low-demand window, the previous scrape (for rates) and the canary analysis window. Memory
is only a speed-up of judgement: after an operator restart it starts empty, which delays a
scale-down or a canary step by one window and changes nothing else. Everything a user or
a restarted operator must know (step, phase, last decision) is in the status, which is
written before the actions (a rollback is recorded, then the weights change).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from coxswain.api.common import ConditionStatus
from coxswain.api.conditions import ModelServiceConditionType as C
from coxswain.api.conditions import ModelServiceReason as R
from coxswain.api.modelservice import (
    AutoscalingMode,
    CanaryPhase,
    CanaryStatus,
    Load,
    ModelService,
    ModelServiceStatus,
    ScaleDecision,
    ScaleMetric,
    VersionStatus,
)
from coxswain.conditions import get_condition, set_condition
from coxswain.events import Event
from coxswain.modelservice import autoscaler, builders, canary, naming
from coxswain.modelservice.load import Window, total_inflight, window
from coxswain.modelservice.readiness import inspect_pods, load_failure_reason, weights_applied
from coxswain.modelservice.scrape import PodSample
from coxswain.modelservice.source import NotServable, ServedModel, resolve
from coxswain.tenancy import Refusal

MIN_RATE_SECONDS = 2.0


class ActionKind(StrEnum):
    ENSURE_SERVICE = "EnsureService"
    ENSURE_TRAFFIC = "EnsureTraffic"
    ENSURE_DEPLOYMENT = "EnsureDeployment"
    SCALE_DEPLOYMENT = "ScaleDeployment"
    ENSURE_HPA = "EnsureHpa"
    DELETE_HPA = "DeleteHpa"
    ENSURE_ACTIVATOR_SLICE = "EnsureActivatorSlice"
    DELETE_ACTIVATOR_SLICE = "DeleteActivatorSlice"
    SET_REPLICAS = "SetReplicas"  # the ModelService's own spec.replicas (scale subresource)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    obj: dict[str, Any] | None = None
    replicas: int = 0


@dataclass
class Memory:
    low: autoscaler.LowDemand | None = None
    previous: dict[str, PodSample] = field(default_factory=dict)
    window_key: tuple[str, int] | None = None  # (canary version, step) the window is about
    window_start: dict[str, PodSample] | None = None
    window_started_at: float = 0.0


@dataclass(frozen=True)
class Observed:
    deployment: dict[str, Any] | None
    service: dict[str, Any] | None
    traffic: dict[str, Any] | None  # the ConfigMap
    hpa: dict[str, Any] | None
    pods: list[dict[str, Any]]
    trainingjob: dict[str, Any] | None
    samples: dict[str, PodSample]  # scraped this pass, by pod name
    # What the tenancy policy (and the namespace's Pod Security level) refuses in the spec.
    refusals: tuple[Refusal, ...] = ()
    # Ready (IP, port) of the activator's pods (scale from zero), and our EndpointSlice that
    # adds them to the Service while no server pod is ready.
    activator_endpoints: tuple[tuple[str, int], ...] = ()
    # The activator's gRPC port (None: an activator that holds HTTP only).
    activator_grpc_port: int | None = None
    activator_slice: dict[str, Any] | None = None
    # Ready endpoints in the endpointslice controller's slices of the Service: what kube-proxy
    # routes to. None: not known (pod readiness stands in). A pod turns Ready before its
    # endpoint does, so the activator's slice goes only once a server endpoint is there.
    served_endpoints: int | None = None


@dataclass
class Plan:
    status: ModelServiceStatus
    memory: Memory
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    scale: ScaleDecision | None = None  # a new decision this pass (for metrics)
    rolled_back: bool = False
    weights: dict[str, int] = field(default_factory=dict)


def _hash(obj: dict[str, Any] | None) -> str | None:
    if obj is None:
        return None
    return str(((obj.get("metadata") or {}).get("annotations") or {}).get(naming.ANNOTATION_SPEC_HASH))


def _load(samples: dict[str, PodSample], win: Window | None) -> Load | None:
    if not samples:
        return None
    p99 = win.p99() if win is not None else None
    return Load(
        inflight=round(total_inflight(samples), 3),
        rps=round(win.rps, 3) if win is not None and win.seconds > 0 else None,
        p99_ms=round(p99 * 1000, 3) if p99 is not None else None,
    )


def plan(ms: ModelService, obs: Observed, memory: Memory, now: datetime, clock: float) -> Plan:
    """`now`: wall time for status; `clock`: monotonic seconds (the scrape timestamps' clock)."""
    name, ns = ms.metadata.name or "", ms.metadata.namespace or ""
    gen = ms.metadata.generation
    old = ms.status or ModelServiceStatus()
    status = ModelServiceStatus(
        url=naming.url(name, ns),
        grpc_url=naming.grpc_url(name, ns),
        selector=naming.selector_string(name),
        conditions=list(old.conditions),
        observed_generation=gen,
        last_scale_decision=old.last_scale_decision,
    )
    memory = replace(memory)
    result = Plan(status=status, memory=memory)
    actions = result.actions

    def cond(type_: C, value: bool | ConditionStatus, reason: str, message: str) -> None:
        status.conditions = set_condition(status.conditions, type_, value, reason, message, now, gen)

    if obs.refusals:
        return _refused(ms, result, obs.refusals, cond)
    served = resolve(ms, obs.trainingjob)
    report = inspect_pods(obs.pods)
    status.replicas, status.ready_replicas = report.existing, report.ready

    # --- replicas -------------------------------------------------------------------------
    auto = ms.spec.autoscaling
    current = ms.spec.replicas
    effective = current if current is not None else autoscaler.initial_replicas(auto)
    win = window(memory.previous, obs.samples) if memory.previous and obs.samples else None
    # Rates over less than MIN_RATE_SECONDS (passes woken by pod events come close
    # together) are noise: keep the older sample as the base until the window is long enough.
    if obs.samples and (win is None or win.pods == 0 or win.seconds >= MIN_RATE_SECONDS):
        memory.previous = dict(obs.samples)
    status.load = _load(obs.samples, win)
    if auto.mode == AutoscalingMode.BUILTIN and not isinstance(served, NotServable):
        if auto.target.metric == ScaleMetric.INFLIGHT:
            demand = total_inflight(obs.samples) if obs.samples else None
        else:
            demand = win.rps if win is not None and win.seconds > 0 else None
        # No request counted over the whole window: quiet since its start (see autoscaler).
        quiet = clock - win.seconds if win is not None and win.pods > 0 and win.requests == 0 else None
        decision = autoscaler.decide(
            effective, demand, auto, memory.low, clock, quiet, activator=bool(obs.activator_endpoints)
        )
        memory.low = decision.low
        if decision.changed(effective) or current is None:
            why = decision.reason if decision.changed(effective) else f"initial replicas {effective}"
            scale = ScaleDecision(time=now, from_=current or 0, to=decision.replicas, reason=why)
            status.last_scale_decision = scale
            result.scale = scale
            effective = decision.replicas
            actions.append(Action(ActionKind.SET_REPLICAS, replicas=effective))
            verb = "ScaledUp" if effective > (current or 0) else "ScaledDown"
            result.events.append(Event("Normal", verb, f"replicas {current or 0} -> {effective}: {why}"))
    elif current is None:
        # The scale subresource (kubectl scale, an HPA) fails while spec.replicas is unset.
        why = f"initial replicas {effective} (autoscaling.mode {auto.mode.value})"
        status.last_scale_decision = ScaleDecision(time=now, from_=0, to=effective, reason=why)
        actions.append(Action(ActionKind.SET_REPLICAS, replicas=effective))
    if auto.mode == AutoscalingMode.HPA:
        hpa = builders.build_hpa(ms)
        if _hash(obs.hpa) != _hash(hpa):
            actions.append(Action(ActionKind.ENSURE_HPA, hpa))
    elif obs.hpa is not None:
        actions.append(Action(ActionKind.DELETE_HPA, obs.hpa))

    # Made even before the model can be served: its DNS name and URL exist from the start.
    service = builders.build_service(ms)
    if _hash(obs.service) != _hash(service):
        actions.append(Action(ActionKind.ENSURE_SERVICE, service))

    routable = report.ready if obs.served_endpoints is None else obs.served_endpoints
    _route_to_activator(ms, obs, routable, effective, not isinstance(served, NotServable), actions)

    if isinstance(served, NotServable):
        return _not_servable(ms, result, served, report, cond)

    # --- versions and canary ------------------------------------------------------------
    record = canary.current_record(
        served.canary, ms.spec.versions.analysis, ms.spec.versions.canary_percent, old.canary
    )
    pct = canary.canary_traffic(ms.spec.versions, record)
    weights = canary.weights(served.stable, served.canary, pct)
    # Only ready pods get requests: a pod still loading answers /metrics without weights yet.
    ready_samples = {n: s for n, s in obs.samples.items() if n in report.ready_names}
    applied = bool(ready_samples) and all(weights_applied(weights, s.weights) for s in ready_samples.values())
    if record is not None and record.phase == CanaryPhase.PROGRESSING and served.canary is not None:
        record, weights = _analyse(ms, served, record, weights, applied, ready_samples, memory, clock, result)
    status.canary = record
    if served.canary is not None and served.canary not in {v.version for v in old.versions}:
        how = f"analysis from {pct}%" if ms.spec.versions.analysis is not None else f"{pct}% of traffic"
        result.events.append(
            Event("Normal", R.CANARY_STARTED, f"canary {served.canary} next to {served.stable}: {how}")
        )
    result.weights = weights

    traffic = builders.build_traffic_config_map(ms, weights)
    if (obs.traffic or {}).get("data") != traffic["data"]:
        actions.append(Action(ActionKind.ENSURE_TRAFFIC, traffic))
    deployment = builders.build_deployment(ms, served, effective)
    if _hash(obs.deployment) != _hash(deployment):
        actions.append(Action(ActionKind.ENSURE_DEPLOYMENT, deployment))
    elif ((obs.deployment or {}).get("spec") or {}).get("replicas") != effective:
        actions.append(Action(ActionKind.SCALE_DEPLOYMENT, replicas=effective))

    weights_ok = applied or not ready_samples  # pods whose metrics we cannot read: trust readiness
    status.versions = [
        VersionStatus(version=v, traffic_percent=w, ready=report.ready > 0 and weights_ok)
        for v, w in weights.items()
    ]
    _conditions(
        ms, status, report, effective, weights_ok, old, record, result, cond, bool(obs.activator_endpoints)
    )
    return result


def activator_routes(ms: ModelService, obs: Observed, ready: int, replicas: int, servable: bool) -> bool:
    """Does the Service need the activator's endpoints? Only a `minReplicas: 0` service with a
    model it can serve (else a held request would wait for nothing), while no server endpoint
    is ready or when its replicas are going to zero.

    The Service must never be without a ready endpoint, or kube-proxy refuses connections. So
    the slice is written in the pass that scales to zero, before the Deployment is (actions
    run in order, and kube-proxy sees the slice before the pod's endpoint leaves), and it is
    deleted only once the endpointslice controller lists a ready server endpoint."""
    wanted = ready == 0 or replicas == 0
    return servable and ms.spec.autoscaling.min_replicas == 0 and wanted and bool(obs.activator_endpoints)


def _route_to_activator(
    ms: ModelService, obs: Observed, ready: int, replicas: int, servable: bool, actions: list[Action]
) -> None:
    if activator_routes(ms, obs, ready, replicas, servable):
        wanted = builders.build_activator_slice(ms, list(obs.activator_endpoints), obs.activator_grpc_port)
        if _hash(obs.activator_slice) != _hash(wanted):
            actions.append(Action(ActionKind.ENSURE_ACTIVATOR_SLICE, wanted))
    elif obs.activator_slice is not None:
        # A ready pod (or no activator): requests go straight to the server pods.
        actions.append(Action(ActionKind.DELETE_ACTIVATOR_SLICE, obs.activator_slice))


def _analyse(
    ms: ModelService,
    served: ServedModel,
    record: CanaryStatus,
    weights: dict[str, int],
    applied: bool,
    samples: dict[str, PodSample],
    memory: Memory,
    clock: float,
    result: Plan,
) -> tuple[CanaryStatus, dict[str, int]]:
    analysis = ms.spec.versions.analysis
    assert analysis is not None and served.canary is not None
    key = (served.canary, record.step or 0)
    if memory.window_key != key or memory.window_start is None:
        memory.window_key = key
        memory.window_start = dict(samples) if applied else None
        memory.window_started_at = clock
        if not applied:
            waiting = "no server pod answers /metrics" if not samples else "pods are loading the weights"
            return record.model_copy(update={"message": f"analysis waits: {waiting}"}), weights
        return record, weights
    if not applied or clock - memory.window_started_at < analysis.interval_seconds:
        return record, weights
    win = window(memory.window_start, samples)
    judgement = canary.judge(win.version(served.stable), win.version(served.canary), analysis)
    step = canary.advance(record, served.canary, analysis, judgement)
    if judgement.verdict != canary.Verdict.WAIT:
        memory.window_key, memory.window_start = None, None
    if step.event_reason is not None:
        result.events.append(
            Event("Warning" if step.warning else "Normal", step.event_reason, step.event_message)
        )
        result.rolled_back = step.record.phase == CanaryPhase.ROLLED_BACK
    pct = canary.canary_traffic(ms.spec.versions, step.record)
    return step.record, canary.weights(served.stable, served.canary, pct)


def _refused(ms: ModelService, result: Plan, refusals: tuple[Refusal, ...], cond: Any) -> Plan:
    """Nothing is made (or changed) for a spec the policy refuses; fixing the spec lets it go on."""
    message = "refused by the cluster's tenancy policy: " + "; ".join(str(r) for r in refusals)
    cond(C.READY, False, R.POLICY_REFUSED, message)
    cond(C.PROGRESSING, False, R.POLICY_REFUSED, message)
    cond(C.DEGRADED, True, R.POLICY_REFUSED, message)
    old = get_condition((ms.status or ModelServiceStatus()).conditions, C.READY)
    if old is None or old.reason != R.POLICY_REFUSED or old.message != message:
        result.events.append(Event("Warning", R.POLICY_REFUSED, message))
    return result


def _not_servable(ms: ModelService, result: Plan, served: NotServable, report: Any, cond: Any) -> Plan:
    reason = R(served.reason) if served.reason in R.__members__.values() else R.LOAD_FAILED
    cond(C.MODEL_LOADED, False, reason, served.message)
    cond(C.READY, False, reason, served.message)
    cond(C.PROGRESSING, served.waiting, reason, served.message)
    cond(C.DEGRADED, not served.waiting, reason if not served.waiting else R.HEALTHY, served.message)
    old = get_condition((ms.status or ModelServiceStatus()).conditions, C.MODEL_LOADED)
    if old is None or old.reason != reason or old.message != served.message:
        result.events.append(Event("Normal" if served.waiting else "Warning", reason, served.message))
    return result


def _conditions(
    ms: ModelService,
    status: ModelServiceStatus,
    report: Any,
    desired: int,
    weights_ok: bool,
    old: ModelServiceStatus,
    record: CanaryStatus | None,
    result: Plan,
    cond: Any,
    activator: bool = False,
) -> None:
    """`activator`: an activator pod is known (it holds requests while the service is at zero)."""
    auto = ms.spec.autoscaling
    need = max(1, min(auto.min_replicas, desired))
    crash = ", ".join(report.crash_looping)
    # ModelLoaded: a ready pod has loaded every version; else the server's own words.
    if report.ready > 0:
        cond(C.MODEL_LOADED, True, R.MODEL_LOADED, f"{report.ready} pod(s) have loaded the model")
    elif report.load_failure is not None:
        cond(C.MODEL_LOADED, False, load_failure_reason(report.load_failure), report.load_failure)
    else:
        why = report.pending or "waiting for a pod to load and warm up the model"
        cond(C.MODEL_LOADED, ConditionStatus.UNKNOWN, R.MODEL_LOADING, why)
    # Ready: true only when a request would succeed on enough pods.
    if desired == 0 and auto.min_replicas == 0 and activator:
        cond(
            C.READY,
            False,
            R.SCALED_TO_ZERO,
            "scaled to zero: the next HTTP request is held by the activator and wakes the service",
        )
    elif desired == 0 and auto.min_replicas == 0:
        cond(
            C.READY,
            False,
            R.SCALED_TO_ZERO,
            "spec.replicas is 0 and no activator is known: requests fail until replicas > 0; enable "
            "the chart's activator (activator.enabled) and, with watchNamespaces, list the "
            "activator's namespace",
        )
    elif desired == 0:
        cond(C.READY, False, R.SCALED_TO_ZERO, "spec.replicas is 0: no pod serves requests")
    elif report.ready == 0:
        detail = (
            f"crash looping: {crash}" if crash else (report.load_failure or report.pending or "pods starting")
        )
        cond(C.READY, False, R.NO_READY_REPLICAS, f"0 of {desired} pods ready; {detail}")
    elif report.ready < need:
        cond(C.READY, False, R.NOT_ENOUGH_READY, f"{report.ready} of at least {need} pods ready")
    elif not weights_ok:
        cond(
            C.READY,
            False,
            R.WEIGHTS_PROPAGATING,
            "pods have not applied the current traffic weights yet",
        )
    else:
        note = ""
        if auto.min_replicas == 0 and not activator and auto.mode == AutoscalingMode.BUILTIN:
            note = f"; {autoscaler.NO_ACTIVATOR}"
        cond(C.READY, True, R.REPLICAS_READY, f"{report.ready} of {desired} pods ready{note}")
    # Progressing: a rollout, a scale-up or a canary analysis under way.
    if record is not None and record.phase == CanaryPhase.PROGRESSING:
        cond(C.PROGRESSING, True, R.CANARY_ANALYSIS, record.message)
    elif report.existing != desired or report.ready < desired:
        cond(C.PROGRESSING, True, R.ROLLOUT_IN_PROGRESS, f"{report.ready} of {desired} pods ready")
    else:
        cond(C.PROGRESSING, False, R.ROLLOUT_COMPLETE, f"{desired} pods ready")
    # Degraded: something needs a person.
    if crash:
        cond(
            C.DEGRADED,
            True,
            R.CRASH_LOOPING,
            f"pods crash looping: {crash}; last error: {report.load_failure}",
        )
    elif record is not None and record.phase == CanaryPhase.ROLLED_BACK:
        cond(C.DEGRADED, True, R.CANARY_ROLLED_BACK, record.message)
    elif report.pending is not None:
        cond(C.DEGRADED, True, R.PODS_PENDING, report.pending)
    elif report.ready < need and report.existing >= need:
        cond(C.DEGRADED, True, R.REPLICAS_UNAVAILABLE, f"{report.ready} of at least {need} pods ready")
    else:
        cond(C.DEGRADED, False, R.HEALTHY, "no problem seen")
    before, after = get_condition(old.conditions, C.READY), get_condition(status.conditions, C.READY)
    if after is not None and (before is None or before.status != after.status):
        kind = "Normal" if after.status == ConditionStatus.TRUE else "Warning"
        if before is not None or after.status == ConditionStatus.TRUE:
            result.events.append(Event(kind, after.reason, after.message))
    crash_before = get_condition(old.conditions, C.DEGRADED)
    if crash and (crash_before is None or crash_before.reason != R.CRASH_LOOPING):
        result.events.append(
            Event("Warning", R.CRASH_LOOPING, f"pods crash looping: {crash}; {report.load_failure}")
        )
