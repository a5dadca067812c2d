"""The planner: observation in, status and actions out (no cluster, no server)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from coxswain.api.modelservice import CanaryPhase, ModelService
from coxswain.modelservice import builders
from coxswain.modelservice.planner import ActionKind, Memory, Observed, Plan, plan
from coxswain.modelservice.scrape import PodSample

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def make(status: dict[str, Any] | None = None, **spec: Any) -> ModelService:
    base: dict[str, Any] = {"model": {"uri": "pvc://models/digits"}, "versions": {"stable": "v1"}}
    base.update(spec)
    doc: dict[str, Any] = {
        "metadata": {"name": "digits", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": base,
    }
    if status is not None:
        doc["status"] = status
    return ModelService.model_validate(doc)


def pod(name: str, ready: bool = True, **container: Any) -> dict[str, Any]:
    cs = {"name": "server", "ready": ready, "restartCount": 0, "state": {"running": {}}, **container}
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [cs],
        },
    }


def observed(
    pods: list[dict[str, Any]] | None = None, samples: dict[str, PodSample] | None = None, **kw: Any
) -> Observed:
    base: dict[str, Any] = {
        "deployment": None,
        "service": None,
        "traffic": None,
        "hpa": None,
        "trainingjob": None,
    }
    base.update(kw)
    return Observed(pods=pods or [], samples=samples or {}, **base)


def kinds(p: Plan) -> list[ActionKind]:
    return [a.kind for a in p.actions]


def cond(p: Plan, type_: str) -> tuple[str, str, str]:
    c = next(c for c in p.status.conditions if c.type == type_)
    return c.status.value, c.reason, c.message


def test_new_service_creates_everything_and_sets_initial_replicas() -> None:
    p = plan(make(autoscaling={"minReplicas": 2}), observed(), Memory(), NOW, 0.0)
    assert kinds(p) == [
        ActionKind.SET_REPLICAS,
        ActionKind.ENSURE_SERVICE,
        ActionKind.ENSURE_TRAFFIC,
        ActionKind.ENSURE_DEPLOYMENT,
    ]
    assert p.actions[0].replicas == 2
    deployment = next(a.obj for a in p.actions if a.kind == ActionKind.ENSURE_DEPLOYMENT)
    assert deployment is not None and deployment["spec"]["replicas"] == 2
    assert p.status.url == "http://digits.ml.svc.cluster.local"
    assert p.status.selector == "coxswain.dev/modelservice=digits"
    assert cond(p, "Ready")[0] == "False"
    assert p.status.last_scale_decision is not None and p.status.last_scale_decision.to == 2


def test_nothing_to_do_when_children_match_and_ready_with_min_pods() -> None:
    ms = make(replicas=2, autoscaling={"minReplicas": 2})
    served = {"name": "digits"}
    assert served
    first = plan(ms, observed(), Memory(), NOW, 0.0)
    objs = {a.kind: a.obj for a in first.actions}
    obs = observed(
        pods=[pod("a"), pod("b")],
        deployment=objs[ActionKind.ENSURE_DEPLOYMENT],
        service=objs[ActionKind.ENSURE_SERVICE],
        traffic=objs[ActionKind.ENSURE_TRAFFIC],
    )
    p = plan(ms, obs, Memory(), NOW, 0.0)
    assert kinds(p) == []
    assert cond(p, "Ready")[:2] == ("True", "ReplicasReady")
    assert cond(p, "Progressing")[:2] == ("False", "RolloutComplete")
    assert (p.status.replicas, p.status.ready_replicas) == (2, 2)
    # One ready pod of the two required is not Ready.
    p = plan(ms, observed(pods=[pod("a"), pod("b", ready=False)]), Memory(), NOW, 0.0)
    assert cond(p, "Ready")[:2] == ("False", "NotEnoughReadyReplicas")


def test_crash_looping_pods_are_not_ready_and_say_why() -> None:
    failing = pod(
        "a",
        ready=False,
        restartCount=4,
        state={"waiting": {"reason": "CrashLoopBackOff"}},
        lastState={
            "terminated": {
                "exitCode": 1,
                "message": "cannot serve model digits: sha256 of model.pt does not match",
            }
        },
    )
    p = plan(make(replicas=1), observed(pods=[failing]), Memory(), NOW, 0.0)
    status, reason, message = cond(p, "Ready")
    assert (status, reason) == (
        "False",
        "NoReadyReplicas",
    ) and "crash looping: a (restarted 4 times)" in message
    assert cond(p, "ModelLoaded")[:2] == ("False", "ChecksumMismatch")
    assert cond(p, "Degraded")[:2] == ("True", "CrashLooping")
    assert any(e.reason == "CrashLooping" and e.type == "Warning" for e in p.events)


def test_training_job_not_ready_creates_no_deployment() -> None:
    ms = make(model={"trainingJobRef": {"name": "train"}})
    p = plan(ms, observed(trainingjob={"status": {"phase": "Running"}, "spec": {}}), Memory(), NOW, 0.0)
    assert ActionKind.ENSURE_DEPLOYMENT not in kinds(p)
    assert cond(p, "ModelLoaded")[:2] == ("False", "TrainingJobNotReady")
    assert cond(p, "Ready")[0] == "False"


def test_hpa_mode_makes_an_hpa_and_leaves_replicas_alone() -> None:
    p = plan(make(replicas=3, autoscaling={"mode": "hpa"}), observed(), Memory(), NOW, 0.0)
    assert ActionKind.ENSURE_HPA in kinds(p) and ActionKind.SET_REPLICAS not in kinds(p)
    # The scale subresource needs spec.replicas to exist before an HPA can read it.
    p = plan(make(autoscaling={"mode": "hpa", "minReplicas": 2}), observed(), Memory(), NOW, 0.0)
    assert [a.replicas for a in p.actions if a.kind == ActionKind.SET_REPLICAS] == [2]
    hpa = builders.build_hpa(make(autoscaling={"mode": "hpa"}))
    p = plan(make(replicas=1), observed(hpa=hpa), Memory(), NOW, 0.0)
    assert ActionKind.DELETE_HPA in kinds(p)


def test_load_step_scales_up_in_the_same_pass() -> None:
    ms = make(replicas=1, autoscaling={"maxReplicas": 5, "target": {"value": 4}})
    samples = {"a": PodSample("a", 10.0, inflight=13.0)}
    p = plan(ms, observed(pods=[pod("a")], samples=samples), Memory(), NOW, 10.0)
    assert p.actions[0].kind == ActionKind.SET_REPLICAS and p.actions[0].replicas == 4
    assert p.status.last_scale_decision is not None and p.status.last_scale_decision.from_ == 1
    assert p.status.load is not None and p.status.load.inflight == 13.0
    assert any(e.reason == "ScaledUp" for e in p.events)


def counters(pod_name: str, at: float, v1: int, v2_ok: int, v2_err: int, w1: int, w2: int) -> PodSample:
    buckets = {0.001: 0.0, 0.005: float(v1), float("inf"): float(v1)}
    buckets2 = {0.001: 0.0, 0.005: float(v2_ok), float("inf"): float(v2_ok)}
    return PodSample(
        pod_name,
        at,
        requests={("v1", "200"): v1, ("v2", "200"): v2_ok, ("v2", "500"): v2_err},
        buckets={"v1": buckets, "v2": buckets2},
        weights={"v1": w1, "v2": w2},
    )


def test_broken_canary_is_rolled_back_after_one_interval() -> None:
    versions = {
        "stable": "v1",
        "canary": "v2",
        "analysis": {"intervalSeconds": 10, "steps": [10, 50, 100], "minRequests": 20},
    }
    ms = make(replicas=1, versions=versions)
    memory = Memory()
    start = {"a": counters("a", 0.0, 0, 0, 0, 90, 10)}
    p = plan(ms, observed(pods=[pod("a")], samples=start), memory, NOW, 0.0)
    assert p.status.canary is not None and p.status.canary.phase == CanaryPhase.PROGRESSING
    assert p.weights == {"v1": 90, "v2": 10}
    early = {"a": counters("a", 5.0, 450, 10, 40, 90, 10)}
    p = plan(
        ms.model_copy(update={"status": p.status}),
        observed(pods=[pod("a")], samples=early),
        p.memory,
        NOW,
        5.0,
    )
    assert p.status.canary is not None and p.status.canary.phase == CanaryPhase.PROGRESSING
    later = {"a": counters("a", 11.0, 900, 20, 80, 90, 10)}
    p = plan(
        ms.model_copy(update={"status": p.status}),
        observed(pods=[pod("a")], samples=later),
        p.memory,
        NOW,
        11.0,
    )
    assert p.status.canary is not None and p.status.canary.phase == CanaryPhase.ROLLED_BACK
    assert p.status.canary.version == "v2" and "error rate" in p.status.canary.message
    assert p.weights == {"v1": 100, "v2": 0} and p.rolled_back
    traffic = next(a.obj for a in p.actions if a.kind == ActionKind.ENSURE_TRAFFIC)
    assert traffic is not None and '"v2": 0' in traffic["data"]["traffic.json"]
    assert cond(p, "Degraded")[:2] == ("True", "CanaryRolledBack")
    assert any(e.reason == "CanaryRolledBack" and e.type == "Warning" for e in p.events)


def test_analysis_waits_until_pods_apply_the_weights() -> None:
    versions = {"stable": "v1", "canary": "v2", "analysis": {"intervalSeconds": 5, "minRequests": 1}}
    ms = make(replicas=1, versions=versions)
    stale = {"a": counters("a", 0.0, 0, 0, 0, 100, 0)}
    p = plan(ms, observed(pods=[pod("a")], samples=stale), Memory(), NOW, 0.0)
    assert p.status.canary is not None and "loading the weights" in p.status.canary.message
    assert cond(p, "Ready")[:2] == ("False", "WeightsPropagating")
    assert p.memory.window_start is None


def test_a_starting_pod_without_weights_does_not_make_the_service_unready() -> None:
    ms = make(replicas=2, versions={"stable": "v1", "canary": "v2", "canaryPercent": 10})
    serving = PodSample("a", 0.0, weights={"v1": 90, "v2": 10})
    starting = PodSample("b", 0.0)  # port open, model still loading: no weights yet
    p = plan(
        ms,
        observed(pods=[pod("a"), pod("b", ready=False)], samples={"a": serving, "b": starting}),
        Memory(),
        NOW,
        0.0,
    )
    assert cond(p, "Ready")[:2] == ("True", "ReplicasReady")
    assert [v.ready for v in p.status.versions] == [True, True]


def test_a_restarted_operator_carries_on_at_the_recorded_step() -> None:
    versions = {"stable": "v1", "canary": "v2", "analysis": {"steps": [10, 50, 100]}}
    status = {"canary": {"phase": "Progressing", "version": "v2", "step": 1, "message": "at 50%"}}
    p = plan(
        make(status=status, replicas=1, versions=versions), observed(pods=[pod("a")]), Memory(), NOW, 0.0
    )
    assert p.weights == {"v1": 50, "v2": 50}
    assert p.status.canary is not None and p.status.canary.step == 1
    rolled = {"canary": {"phase": "RolledBack", "version": "v2", "step": 0, "message": "bad"}}
    p = plan(
        make(status=rolled, replicas=1, versions=versions), observed(pods=[pod("a")]), Memory(), NOW, 0.0
    )
    assert p.weights == {"v1": 100, "v2": 0}
    # A new canary version starts over at the first step.
    newer = {**versions, "canary": "v3"}
    p = plan(make(status=rolled, replicas=1, versions=newer), observed(pods=[pod("a")]), Memory(), NOW, 0.0)
    assert p.weights == {"v1": 90, "v3": 10}
    assert p.status.canary is not None and p.status.canary.version == "v3"


def test_a_spec_the_policy_refuses_is_not_ready_and_makes_nothing() -> None:
    from coxswain.tenancy import Refusal

    refusal = Refusal("spec.repository.hostPath", "hostPath volumes are not allowed on this cluster")
    p = plan(make(), observed(refusals=(refusal,)), Memory(), NOW, 0.0)
    assert kinds(p) == []
    status, reason, message = cond(p, "Ready")
    assert (status, reason) == ("False", "PolicyRefused") and "spec.repository.hostPath" in message
    assert [e.reason for e in p.events] == ["PolicyRefused"]


def test_min_zero_without_a_ready_pod_routes_the_service_to_the_activator() -> None:
    ms = make(replicas=0, autoscaling={"minReplicas": 0})
    p = plan(ms, observed(activator_endpoints=(("10.1.0.7", 8080), ("10.1.0.5", 8080))), Memory(), NOW, 0.0)
    slice_ = next(a.obj for a in p.actions if a.kind == ActionKind.ENSURE_ACTIVATOR_SLICE)
    assert slice_ is not None
    assert slice_["metadata"]["name"] == "digits-activator"
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "digits"
    assert slice_["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "coxswain-operator"
    assert [e["addresses"] for e in slice_["endpoints"]] == [["10.1.0.5"], ["10.1.0.7"]]
    assert slice_["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    status, reason, message = cond(p, "Ready")
    assert (status, reason) == ("False", "ScaledToZero") and "activator" in message
    # The same slice again: nothing to do.
    p = plan(
        ms,
        observed(activator_endpoints=(("10.1.0.5", 8080), ("10.1.0.7", 8080)), activator_slice=slice_),
        Memory(),
        NOW,
        0.0,
    )
    assert ActionKind.ENSURE_ACTIVATOR_SLICE not in kinds(p)
    # A ready pod: straight to the pods again.
    p = plan(
        make(replicas=1, autoscaling={"minReplicas": 0}),
        observed(pods=[pod("a")], activator_endpoints=(("10.1.0.5", 8080),), activator_slice=slice_),
        Memory(),
        NOW,
        0.0,
    )
    assert ActionKind.DELETE_ACTIVATOR_SLICE in kinds(p)
    assert ActionKind.ENSURE_ACTIVATOR_SLICE not in kinds(p)


def test_the_activator_slice_stays_until_the_services_own_slice_lists_a_ready_endpoint() -> None:
    # A pod turns Ready before the endpointslice controller says so, and kube-proxy follows
    # the slice: dropping the activator first would leave the Service without an endpoint.
    ms = make(replicas=1, autoscaling={"minReplicas": 0})
    slice_ = next(
        a.obj
        for a in plan(
            make(replicas=0, autoscaling={"minReplicas": 0}),
            observed(activator_endpoints=ACTIVATOR),
            Memory(),
            NOW,
            0.0,
        ).actions
        if a.kind == ActionKind.ENSURE_ACTIVATOR_SLICE
    )
    seen = observed(
        pods=[pod("a")], activator_endpoints=ACTIVATOR, activator_slice=slice_, served_endpoints=0
    )
    p = plan(ms, seen, Memory(), NOW, 0.0)
    assert not {ActionKind.DELETE_ACTIVATOR_SLICE, ActionKind.ENSURE_ACTIVATOR_SLICE} & set(kinds(p))
    seen = observed(
        pods=[pod("a")], activator_endpoints=ACTIVATOR, activator_slice=slice_, served_endpoints=1
    )
    assert ActionKind.DELETE_ACTIVATOR_SLICE in kinds(plan(ms, seen, Memory(), NOW, 0.0))


def test_an_activator_with_a_grpc_port_gets_the_services_grpc_port_too() -> None:
    ms = make(replicas=0, autoscaling={"minReplicas": 0})
    obs = observed(activator_endpoints=(("10.1.0.5", 8080),), activator_grpc_port=8081)
    p = plan(ms, obs, Memory(), NOW, 0.0)
    slice_ = next(a.obj for a in p.actions if a.kind == ActionKind.ENSURE_ACTIVATOR_SLICE)
    assert slice_ is not None
    assert slice_["ports"] == [
        {"name": "http", "port": 8080, "protocol": "TCP"},
        {"name": "grpc", "port": 8081, "protocol": "TCP"},
    ]


def test_no_activator_slice_for_min_one_or_without_an_activator() -> None:
    p = plan(make(replicas=1), observed(activator_endpoints=(("10.1.0.5", 8080),)), Memory(), NOW, 0.0)
    assert ActionKind.ENSURE_ACTIVATOR_SLICE not in kinds(p)
    p = plan(make(replicas=0, autoscaling={"minReplicas": 0}), observed(), Memory(), NOW, 0.0)
    assert ActionKind.ENSURE_ACTIVATOR_SLICE not in kinds(p)


ACTIVATOR = (("10.1.0.5", 8080),)


def _sample(at: float, requests: float, inflight: float = 0.0) -> PodSample:
    return PodSample("a", at, inflight, {("v1", "200"): requests}, {}, {"v1": 100.0})


def test_min_zero_scales_to_zero_only_after_the_delay_without_a_request() -> None:
    auto = {"minReplicas": 0, "scaleDownDelaySeconds": 10}
    ms = make(replicas=1, autoscaling=auto)
    memory = Memory()
    # Requests keep coming (none in flight at the scrapes): one pod stays.
    for t, n in ((0.0, 0), (3.0, 5), (6.0, 9), (9.0, 12), (12.0, 20), (15.0, 25)):
        p = plan(
            ms,
            observed(activator_endpoints=ACTIVATOR, pods=[pod("a")], samples={"a": _sample(t, n)}),
            memory,
            NOW,
            t,
        )
        memory = p.memory
        assert ActionKind.SET_REPLICAS not in kinds(p), t
    # The last request was counted by 15 s: quiet since then; zero at 25 s, not before.
    for t in (18.0, 21.0, 24.0):
        p = plan(
            ms,
            observed(activator_endpoints=ACTIVATOR, pods=[pod("a")], samples={"a": _sample(t, 25)}),
            memory,
            NOW,
            t,
        )
        memory = p.memory
        assert ActionKind.SET_REPLICAS not in kinds(p), t
    p = plan(
        ms,
        observed(activator_endpoints=ACTIVATOR, pods=[pod("a")], samples={"a": _sample(27.0, 25)}),
        memory,
        NOW,
        27.0,
    )
    assert [a.replicas for a in p.actions if a.kind == ActionKind.SET_REPLICAS] == [0]
    # The activator's slice is written before the Deployment loses its pod: the Service is
    # never without a ready endpoint (kube-proxy would refuse connections meanwhile).
    order = kinds(p)
    assert order.index(ActionKind.ENSURE_ACTIVATOR_SLICE) < order.index(ActionKind.ENSURE_DEPLOYMENT)


def test_min_zero_without_an_activator_keeps_one_replica_and_says_why() -> None:
    auto = {"minReplicas": 0, "scaleDownDelaySeconds": 10}
    memory = Memory()
    # Quiet for far longer than the delay: with no activator to hold requests, one pod stays.
    for t in (0.0, 3.0, 30.0, 60.0):
        p = plan(
            make(replicas=1, autoscaling=auto),
            observed(pods=[pod("a")], samples={"a": _sample(t, 5)}),
            memory,
            NOW,
            t,
        )
        memory = p.memory
        assert ActionKind.SET_REPLICAS not in kinds(p), t
    status, reason, message = cond(p, "Ready")
    assert (status, reason) == ("True", "ReplicasReady")
    assert "no activator" in message and "activator.enabled" in message
    # Already at zero (the activator went away): raised to one, the reason says what to do.
    p = plan(make(replicas=0, autoscaling=auto), observed(), Memory(), NOW, 0.0)
    assert [a.replicas for a in p.actions if a.kind == ActionKind.SET_REPLICAS] == [1]
    assert p.scale is not None and "no activator" in p.scale.reason


def test_replicas_zero_without_an_activator_does_not_claim_requests_are_held() -> None:
    p = plan(make(replicas=0, autoscaling={"minReplicas": 0, "mode": "none"}), observed(), Memory(), NOW, 0.0)
    status, reason, message = cond(p, "Ready")
    assert (status, reason) == ("False", "ScaledToZero")
    assert "held" not in message and "activator.enabled" in message
