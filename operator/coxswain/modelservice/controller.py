"""The ModelService controller: kopf watches feed the shared runtime (coxswain.runtime).

- `@kopf.index` keeps each service's pods and children (Deployment, Service, ConfigMap,
  HPA) in memory, so a pass lists nothing from the API server; the TrainingJob a service
  serves from is read from the TrainingJob controller's cache.
- Watch events of those objects and of the ModelService itself queue its key. A pass also
  asks for the next one every SCRAPE_INTERVAL seconds to read the servers' /metrics
  (pulled: server pods hold no API credentials) for the autoscaler and the canary analysis.
- No daemon and no finalizer (deletion never waits for the operator; older operators'
  finalizers are removed on the first pass): children go by ownerReference garbage
  collection, our bookkeeping on the DELETED event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from coxswain import metrics, name_conflicts
from coxswain.activator.backends import ready_addresses, ready_endpoints
from coxswain.api import GROUP, MODELSERVICE_PLURAL, VERSION
from coxswain.api.common import ConditionStatus
from coxswain.api.conditions import ModelServiceConditionType as C
from coxswain.api.conditions import ModelServiceReason as R
from coxswain.api.modelservice import AutoscalingMode, ModelService
from coxswain.cluster_facts import pod_security_level
from coxswain.conditions import get_condition
from coxswain.kube import MODELSERVICE_RESOURCE
from coxswain.modelservice import naming
from coxswain.modelservice.executor import execute
from coxswain.modelservice.planner import Memory, Observed, Plan, plan
from coxswain.modelservice.scrape import scrape, scrape_targets
from coxswain.ownership import NameConflict, controlled, slim_owner, trusted_serving
from coxswain.runtime import Key, Logger, Runtime

# Seconds between scrapes while the builtin autoscaler or a canary analysis needs them:
# with a 3 s period a load step is seen within 3 s and acted on in the same pass.
SCRAPE_INTERVAL = 3.0
LOAD_INTERVAL = 15.0  # hpa / none modes: scrape only for status.load
RESYNC_INTERVAL = 60.0
LABELS = {naming.LABEL_MODELSERVICE: kopf.PRESENT}
# Concurrent passes (of different services): a pass mostly awaits the API server, and 100
# ModelServices applied at once waited in line behind 8 workers for their Deployment.
WORKERS = 32
KIND = "ModelService"

log = logging.getLogger("coxswain.modelservice")

_POD_STATUS_KEYS = ("phase", "podIP", "conditions", "containerStatuses")


def _slim(body: kopf.Body, status_keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Only what the planner reads: keeps the operator small with many pods."""
    meta = body.get("metadata", {})
    status = dict(body.get("status", {}) or {})
    spec = body.get("spec", {}) or {}
    return {
        "kind": body.get("kind"),
        "metadata": {
            "name": meta.get("name"),
            # Trust goes by the ownerReference chain, not labels (ownership.py).
            **slim_owner(body),
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


def _controller(memo: kopf.Memo) -> Any:
    return Runtime.of(memo).controllers[KIND]


def _child_index(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo
) -> dict[tuple[str, str], dict[str, Any]]:
    key = (namespace or "", labels[naming.LABEL_MODELSERVICE])
    _controller(memo).wake(key)
    return {key: _slim(body)}


# Async: they run on the event loop, where the work queue lives (kopf runs sync handlers in
# threads).
@kopf.index("", "v1", "pods", labels=LABELS)
async def modelservice_pods(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    key = (namespace or "", labels[naming.LABEL_MODELSERVICE])
    _controller(memo).wake(key)
    return {key: _slim(body, _POD_STATUS_KEYS)}


@kopf.index("apps", "v1", "deployments", labels=LABELS)
async def modelservice_deployments(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return _child_index(namespace, labels, body, memo)


@kopf.index("", "v1", "services", labels=LABELS)
async def modelservice_services(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return _child_index(namespace, labels, body, memo)


@kopf.index("", "v1", "configmaps", labels=LABELS)
async def modelservice_configmaps(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return _child_index(namespace, labels, body, memo)


@kopf.index("apps", "v1", "replicasets", labels=LABELS)
async def modelservice_replicasets(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    # The link between a server pod and the Deployment: pod -> ReplicaSet -> Deployment.
    return _child_index(namespace, labels, body, memo)


@kopf.index("discovery.k8s.io", "v1", "endpointslices", labels=LABELS)
async def modelservice_endpointslices(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    # Ours (the activator's endpoints, while scaled to zero) and the endpointslice
    # controller's (a server pod turning ready queues the service at once), with their ready
    # endpoints counted (`served_endpoints` keeps only the controller's).
    indexed = _child_index(namespace, labels, body, memo)
    for slim in indexed.values():
        slim["readyEndpoints"] = len(ready_addresses(body))
    return indexed


@kopf.index("discovery.k8s.io", "v1", "endpointslices", labels={naming.LABEL_ACTIVATOR: kopf.PRESENT})
async def modelservice_activators(
    *, namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], list[tuple[str, str, int]]]:
    """The activator's pod addresses (port name, IP, port), from its Service's slices: every
    service that routes to it is queued, so a new or moved activator pod is in their slices on
    the next pass."""
    controller = _controller(memo)
    for key, ms in list(controller.bodies.items()):
        if ((ms.get("spec") or {}).get("autoscaling") or {}).get("minReplicas") == 0:
            controller.wake(key)
    return {
        (namespace or "", name): [
            (port, ip, number)
            for port, addresses in ready_endpoints(body).items()
            for ip, number in addresses
        ]
    }


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=LABELS)
async def modelservice_hpas(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return _child_index(namespace, labels, body, memo)


# kopf's "Handler 'modelservice_seen' succeeded." INFO line is dropped by a log filter
# (cli/operator.py).
@kopf.on.event(GROUP, VERSION, MODELSERVICE_PLURAL)
async def modelservice_seen(
    *, type: str | None, namespace: str | None, name: str, memo: kopf.Memo, body: kopf.Body, **_: Any
) -> None:
    """Keep the latest body and queue the service: spec changes (versions, replicas from
    `kubectl scale` or an HPA) take effect at once."""
    key = (namespace or "", name)
    controller = _controller(memo)
    if type == "DELETED":
        metrics.forget_modelservice(*key)
        controller.forget(key)
        log.info(
            "[%s/%s] ModelService deleted; its Deployment, pods, Service, ConfigMap and HPA are "
            "garbage-collected",
            *key,
        )
        return
    controller.seen(key, body)


def _first(index: Mapping[Key, Any], key: Key, kind: str) -> dict[str, Any] | None:
    for obj in index.get(key, []):
        if obj.get("kind") in (kind, None):
            return cast(dict[str, Any], obj)
    return None


def activator_slice(slices: Mapping[Key, Any], key: Key) -> dict[str, Any] | None:
    """Our EndpointSlice that routes `key`'s Service to the activator, by its name: the
    endpointslice controller's slices of that Service carry the same labels (copied from the
    Service) and must never be taken for it, or a pass would delete them."""
    name = naming.activator_slice_name(key[1])
    for obj in slices.get(key, []):
        if (obj.get("metadata") or {}).get("name") == name:
            return cast(dict[str, Any], obj)
    return None


def served_endpoints(slices: Mapping[Key, Any], key: Key, service: dict[str, Any] | None) -> int:
    """Ready server endpoints on the http port in the endpointslice controller's slices of
    `key`'s Service: those the Service controls (ours, listing the activator, never count)."""
    uid = ((service or {}).get("metadata") or {}).get("uid")
    mine = controlled(slices.get(key, []), [uid])
    return sum(int(obj.get("readyEndpoints") or 0) for obj in mine)


@dataclass
class Observation:
    observed: Observed
    scraped_at: float


@dataclass
class ModelServices:
    """The ModelService kind on the shared runtime."""

    runtime: Runtime
    name: str = KIND
    resource: Any = MODELSERVICE_RESOURCE
    workers: int = WORKERS
    resync: float = RESYNC_INTERVAL
    # What the autoscaler and the canary analysis remember between passes (see planner.Memory).
    memory: dict[Key, Memory] = field(default_factory=dict)

    def parse(self, raw: dict[str, Any]) -> ModelService:
        return ModelService.model_validate(raw)

    async def observe(self, key: Key, ms: ModelService) -> Observation:
        uid = ms.metadata.uid

        def index(name: str) -> Mapping[Key, Any]:
            # Labels find candidates; only children this ModelService controls count.
            return {key: controlled(self.runtime.index(name).get(key, []), [uid])}

        pods = trusted_serving(
            uid,
            self.runtime.index("modelservice_deployments").get(key, []),
            self.runtime.index("modelservice_replicasets").get(key, []),
            [p for p in self.runtime.index("modelservice_pods").get(key, []) if p],
        )
        ref = ms.spec.model.training_job_ref
        trainingjobs = self.runtime.controllers.get("TrainingJob")
        trainingjob = trainingjobs.bodies.get((key[0], ref.name)) if ref and trainingjobs else None
        activator = self.activator_endpoints()
        targets = scrape_targets(pods)
        scraped_at = time.monotonic()
        samples = await scrape(self.runtime.http, targets) if targets else {}
        if len(samples) < len(targets):
            metrics.MODELSERVICE_SCRAPE_FAILURES.labels(*key).inc(len(targets) - len(samples))
        service = _first(index("modelservice_services"), key, "Service")
        observed = Observed(
            deployment=_first(index("modelservice_deployments"), key, "Deployment"),
            service=service,
            traffic=_first(index("modelservice_configmaps"), key, "ConfigMap"),
            hpa=_first(index("modelservice_hpas"), key, "HorizontalPodAutoscaler"),
            activator_endpoints=activator.get("http", ()),
            activator_grpc_port=min((p for _, p in activator.get("grpc", ())), default=None),
            activator_slice=activator_slice(index("modelservice_endpointslices"), key),
            served_endpoints=served_endpoints(
                self.runtime.index("modelservice_endpointslices"), key, service
            ),
            pods=pods,
            trainingjob=trainingjob,
            samples=samples,
            refusals=tuple(
                self.runtime.tenancy.check_modelservice(
                    key[0],
                    ms.spec,
                    pod_security_level(self.runtime.index("namespace_pod_security"), key[0]),
                )
            ),
        )
        return Observation(observed, scraped_at)

    def activator_endpoints(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """The activator pods' (IP, port) by port name, from every slice of its Service."""
        found: dict[str, set[tuple[str, int]]] = {}
        for ips in self.runtime.index("modelservice_activators").values():
            for some in ips:
                for name, ip, port in some:
                    found.setdefault(name, set()).add((ip, port))
        return {name: tuple(sorted(addresses)) for name, addresses in found.items()}

    def plan(self, key: Key, ms: ModelService, observation: Observation) -> Plan:
        memory = self.memory.get(key) or Memory()
        clock = self.runtime.clock
        result = plan(ms, observation.observed, memory, clock.now(), time.monotonic())
        self.memory[key] = result.memory
        return result

    async def act(self, ms: ModelService, result: Plan, logger: Logger) -> dict[str, Any] | None:
        conflict: NameConflict | None = None
        written: dict[str, Any] | None = None
        try:
            written = await execute(self.runtime.client, ms, result, logger)
        except NameConflict as exc:
            conflict = exc
            logger.warning("%s", exc)
            self.runtime.post_event(ms.to_dict(), "Warning", "NameConflict", str(exc))
        key = (ms.metadata.namespace or "", ms.metadata.name or "")
        conditions = result.status.conditions
        recorded = await name_conflicts.record(
            self.runtime.client,
            self.resource,
            key,
            conditions,
            conflict,
            self.runtime.clock.now(),
            ms.metadata.generation,
        )
        written = recorded or written
        for event in result.events:
            say = logger.warning if event.type == "Warning" else logger.info
            say("%s: %s", event.reason, event.message)
        return written

    def record(self, key: Key, ms: ModelService, result: Plan, observation: Observation) -> float:
        if result.scale is not None and observation.observed.samples:
            metrics.MODELSERVICE_SCALE_DECISION_SECONDS.observe(time.monotonic() - observation.scraped_at)
        _record_metrics(ms, result)
        auto = ms.spec.autoscaling
        analysing = ms.spec.versions.analysis is not None and ms.spec.versions.canary is not None
        if auto.mode == AutoscalingMode.BUILTIN or analysing:
            return SCRAPE_INTERVAL
        return LOAD_INTERVAL if observation.observed.pods else RESYNC_INTERVAL

    def forget(self, key: Key) -> None:
        self.memory.pop(key, None)


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
    if any(e.reason == R.CANARY_PROMOTED for e in result.events):
        metrics.MODELSERVICE_CANARY_PROMOTIONS.labels(ns, name).inc()
