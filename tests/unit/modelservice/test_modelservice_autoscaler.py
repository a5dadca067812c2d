"""The builtin autoscaler's decision: up at once, down after the delay, within the bounds."""

from __future__ import annotations

import pytest

from coxswain.api.modelservice import Autoscaling
from coxswain.modelservice.autoscaler import Decision, LowDemand, decide, initial_replicas

pytestmark = pytest.mark.unit


def auto(**kw: object) -> Autoscaling:
    base: dict[str, object] = {
        "minReplicas": 1,
        "maxReplicas": 6,
        "target": {"value": 8},
        "scaleDownDelaySeconds": 30,
    }
    base.update(kw)
    return Autoscaling.model_validate(base)


def test_load_step_raises_replicas_at_once() -> None:
    d = decide(current=1, load=30.0, auto=auto(), low=None, now=0.0)
    assert d.replicas == 4 and "needs 4" in d.reason


def test_exact_multiple_does_not_round_up() -> None:
    assert decide(2, 16.0, auto(), None, 0.0).replicas == 2
    assert decide(2, 16.01, auto(), None, 0.0).replicas == 3


def test_max_holds_and_says_so() -> None:
    d = decide(2, 1000.0, auto(), None, 0.0)
    assert d.replicas == 6 and "capped at maxReplicas 6" in d.reason


def test_idle_lowers_only_after_the_delay() -> None:
    a = auto()
    d = decide(4, 0.0, a, None, now=100.0)
    assert d.replicas == 4 and d.low == LowDemand(100.0, 1)
    d = decide(4, 0.0, a, d.low, now=120.0)
    assert d.replicas == 4 and "20 s so far" in d.reason
    d = decide(4, 0.0, a, d.low, now=130.0)
    assert d.replicas == 1 and d.low is None


def test_scale_down_goes_to_the_peak_seen_during_the_delay() -> None:
    a = auto()
    d = decide(5, 0.0, a, None, 0.0)
    d = decide(5, 20.0, a, d.low, 10.0)  # a burst asking for 3
    d = decide(5, 0.0, a, d.low, 31.0)
    assert d.replicas == 3


def test_demand_back_up_resets_the_delay() -> None:
    a = auto()
    d = decide(4, 0.0, a, None, 0.0)
    d = decide(4, 32.0, a, d.low, 20.0)  # needs exactly 4 again
    assert d.low is None
    d = decide(4, 0.0, a, d.low, 40.0)
    assert d.replicas == 4  # a fresh delay starts at 40


def test_min_holds_and_min_zero_scales_to_zero_after_the_delay() -> None:
    assert decide(3, 0.0, auto(minReplicas=3), LowDemand(0.0, 3), 1000.0).replicas == 3
    assert decide(0, None, auto(minReplicas=2), None, 0.0).replicas == 2
    assert decide(9, 0.0, auto(), None, 0.0).replicas == 6
    # minReplicas 0: a pod that counted no request goes scaleDownDelaySeconds after the
    # last one (the quiet window's start), not before.
    a = auto(minReplicas=0)
    d = decide(1, 0.0, a, None, 10.0, quiet_since=7.0)
    assert d.replicas == 1 and d.low == LowDemand(7.0, 0)
    d = decide(1, 0.0, a, d.low, 36.0, quiet_since=7.0)
    assert d.replicas == 1
    d = decide(1, 0.0, a, d.low, 37.0, quiet_since=7.0)
    assert d.replicas == 0 and "scaleDownDelaySeconds 30" in d.reason
    # At zero no pod answers /metrics: the count stays until the activator raises it.
    assert decide(0, None, a, None, 40.0).replicas == 0
    assert decide(1, None, a, None, 41.0).replicas == 1


def test_a_trickle_with_nothing_in_flight_at_the_scrape_keeps_one_pod() -> None:
    a = auto(minReplicas=0)
    d = decide(1, 0.0, a, LowDemand(0.0, 0), 1000.0)  # requests counted: not quiet
    assert d.replicas == 1 and d.low is None and "1 is right" in d.reason


def test_a_new_service_starts_with_one_replica_even_with_min_zero() -> None:
    assert initial_replicas(auto(minReplicas=0)) == 1
    assert initial_replicas(auto(minReplicas=3)) == 3


def test_no_metrics_keeps_replicas() -> None:
    d = decide(3, None, auto(), LowDemand(0.0, 1), 1000.0)
    assert d == Decision(3, d.reason, LowDemand(0.0, 1)) and "no server answered" in d.reason


def test_rps_target() -> None:
    d = decide(1, 250.0, auto(target={"metric": "rps", "value": 100}), None, 0.0)
    assert d.replicas == 3 and "requests/s" in d.reason


def test_without_an_activator_the_floor_is_one() -> None:
    a = auto(minReplicas=0, scaleDownDelaySeconds=30)
    assert decide(1, 0.0, a, LowDemand(0.0, 0), 1000.0, quiet_since=0.0, activator=False).replicas == 1
    d = decide(0, None, a, None, 0.0, activator=False)
    assert d.replicas == 1 and "no activator" in d.reason
    assert decide(1, 0.0, a, LowDemand(0.0, 0), 1000.0, quiet_since=0.0).replicas == 0
