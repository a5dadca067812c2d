"""Canary analysis: verdicts from two versions' windows, steps, promotion and rollback; the
window arithmetic on the servers' counters and histograms."""

from __future__ import annotations

import pytest

from coxswain.api.modelservice import CanaryAnalysis, CanaryPhase, CanaryStatus, Versions
from coxswain.modelservice import canary
from coxswain.modelservice.canary import Verdict, advance, judge
from coxswain.modelservice.load import VersionWindow, histogram_quantile, quantile_bucket, window
from coxswain.modelservice.scrape import PodSample, parse_metrics

pytestmark = pytest.mark.unit

ANALYSIS = CanaryAnalysis(
    steps=[10, 25, 50, 100], min_requests=50, max_error_rate_increase=0.01, max_p99_ratio=1.5
)


# The server's latency buckets (coxswain_server.metrics.LATENCY_BUCKETS).
BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    float("inf"),
)


def vw(requests: float, errors: float = 0.0, fast: float = 0.005) -> VersionWindow:
    """`requests` with latencies all in the bucket ending at `fast` seconds."""
    good = requests - errors
    return VersionWindow(requests, errors, {le: (good if le >= fast else 0.0) for le in BUCKETS})


def test_too_few_canary_requests_waits() -> None:
    j = judge(vw(1000), vw(20), ANALYSIS)
    assert j.verdict == Verdict.WAIT and "20 of 50" in j.message


def test_p99_waits_for_enough_requests_but_errors_fail_at_once() -> None:
    slow = judge(vw(1000, fast=0.01), vw(100, fast=0.05), ANALYSIS)
    assert slow.verdict == Verdict.WAIT and "p99" in slow.message
    assert judge(vw(1000), vw(60, errors=30), ANALYSIS).verdict == Verdict.FAIL


def test_error_rate_above_stable_fails() -> None:
    j = judge(vw(1000, errors=1), vw(100, errors=5), ANALYSIS)
    assert j.verdict == Verdict.FAIL and "5.00%" in j.message


def test_small_error_increase_within_bounds_passes() -> None:
    assert judge(vw(1000, errors=10), vw(300, errors=4), ANALYSIS).verdict == Verdict.PASS


def test_p99_ratio_fails_only_beyond_noise() -> None:
    slow = judge(vw(1000, fast=0.01), vw(300, fast=0.05), ANALYSIS)
    assert slow.verdict == Verdict.FAIL and "p99" in slow.message
    # 0.8 ms vs 1.6 ms is a ratio of 2 but no difference anybody notices.
    assert judge(vw(1000, fast=0.001), vw(300, fast=0.002), ANALYSIS).verdict == Verdict.PASS
    # Stable p99 in (7.5, 10] ms: only a canary p99 surely above 15 ms, i.e. in a bucket that
    # starts at or above 15 ms + 1 bucket, is surely 1.5x slower.
    assert judge(vw(1000, fast=0.01), vw(300, fast=0.015), ANALYSIS).verdict == Verdict.PASS
    assert judge(vw(1000, fast=0.01), vw(300, fast=0.025), ANALYSIS).verdict == Verdict.PASS
    assert judge(vw(1000, fast=0.01), vw(300, fast=0.05), ANALYSIS).verdict == Verdict.FAIL


def test_steps_walk_then_promote() -> None:
    record = CanaryStatus(phase=CanaryPhase.PROGRESSING, version="v2", step=0)
    ok = judge(vw(1000), vw(300), ANALYSIS)
    seen = []
    for _ in range(3):
        result = advance(record, "v2", ANALYSIS, ok)
        record = result.record
        seen.append(
            (
                record.phase,
                canary.canary_traffic(Versions(stable="v1", canary="v2", analysis=ANALYSIS), record),
                result.event_reason,
            )
        )
    assert seen == [
        (CanaryPhase.PROGRESSING, 25, "CanaryStepPassed"),
        (CanaryPhase.PROGRESSING, 50, "CanaryStepPassed"),
        (CanaryPhase.PROMOTED, 100, "CanaryPromoted"),
    ]
    assert canary.weights("v1", "v2", 100) == {"v1": 0, "v2": 100}


def test_failure_rolls_back_to_zero_and_keeps_the_version_loaded() -> None:
    record = CanaryStatus(phase=CanaryPhase.PROGRESSING, version="v2", step=1)
    result = advance(record, "v2", ANALYSIS, judge(vw(1000), vw(100, errors=50), ANALYSIS))
    assert result.record.phase == CanaryPhase.ROLLED_BACK and result.warning
    assert "25%" in result.record.message
    pct = canary.canary_traffic(
        Versions(stable="v1", canary="v2", canaryPercent=10, analysis=ANALYSIS), result.record
    )
    assert pct == 0 and canary.weights("v1", "v2", pct) == {"v1": 100, "v2": 0}


def test_record_lasts_until_the_canary_version_changes() -> None:
    rolled = CanaryStatus(phase=CanaryPhase.ROLLED_BACK, version="v2", step=1)
    assert canary.current_record("v2", ANALYSIS, None, rolled) == rolled
    fresh = canary.current_record("v3", ANALYSIS, None, rolled)
    assert (
        fresh is not None
        and fresh.phase == CanaryPhase.PROGRESSING
        and fresh.version == "v3"
        and fresh.step == 0
    )
    assert canary.current_record(None, ANALYSIS, None, rolled) is None


def test_canary_percent_picks_the_first_step_and_without_analysis_is_the_traffic() -> None:
    assert canary.first_step(ANALYSIS, 25) == 2 - 1
    assert canary.first_step(ANALYSIS, 30) == 2
    assert canary.canary_traffic(Versions(stable="v1", canary="v2"), None) == 10
    assert canary.canary_traffic(Versions(stable="v1", canary="v2", canaryPercent=33), None) == 33
    with_analysis = Versions(stable="v1", canary="v2", canaryPercent=30, analysis=ANALYSIS)
    assert canary.canary_traffic(with_analysis, None) == with_analysis.effective_canary_percent == 50
    assert canary.weights("v1", None, 0) == {"v1": 100}


METRICS = """\
# TYPE coxswain_server_requests_total counter
coxswain_server_requests_total{{model="m",version="v1",code="200"}} {ok1}
coxswain_server_requests_total{{model="m",version="v2",code="200"}} {ok2}
coxswain_server_requests_total{{model="m",version="v2",code="500"}} {err2}
# TYPE coxswain_server_request_duration_seconds histogram
coxswain_server_request_duration_seconds_bucket{{model="m",version="v1",le="0.001"}} 0.0
coxswain_server_request_duration_seconds_bucket{{model="m",version="v1",le="0.01"}} {ok1}
coxswain_server_request_duration_seconds_bucket{{model="m",version="v1",le="+Inf"}} {ok1}
coxswain_server_request_duration_seconds_count{{model="m",version="v1"}} {ok1}
coxswain_server_request_duration_seconds_sum{{model="m",version="v1"}} 1.0
# TYPE coxswain_server_inflight_requests gauge
coxswain_server_inflight_requests{{model="m"}} {inflight}
# TYPE coxswain_server_traffic_weight gauge
coxswain_server_traffic_weight{{model="m",version="v1"}} 90.0
coxswain_server_traffic_weight{{model="m",version="v2"}} 10.0
"""


def sample(pod: str, at: float, ok1: int, ok2: int, err2: int, inflight: int = 0) -> PodSample:
    return parse_metrics(pod, at, METRICS.format(ok1=ok1, ok2=ok2, err2=err2, inflight=inflight))


def test_parse_and_window_across_pods_with_a_restart() -> None:
    s = sample("a", 0.0, 100, 10, 1, inflight=3)
    assert s.inflight == 3 and s.requests[("v2", "500")] == 1 and s.weights == {"v1": 90.0, "v2": 10.0}
    before = {"a": s, "b": sample("b", 0.0, 50, 5, 0)}
    after = {
        "a": sample("a", 10.0, 190, 20, 3),
        "b": sample("b", 10.0, 30, 2, 0),  # restarted: counters began again at zero
        "c": sample("c", 10.0, 500, 0, 0),  # new: its earlier requests are not in this window
    }
    w = window(before, after)
    assert w.seconds == 10.0 and w.pods == 2
    assert w.version("v1").requests == 90 + 30
    assert (w.version("v2").requests, w.version("v2").errors) == (10 + 2 + 2, 2)
    assert w.rps == pytest.approx((120 + 14) / 10)


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.001: 0.0, 0.01: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.001 + 0.009 * 0.99)
    assert histogram_quantile(0.5, {0.01: 0.0, float("inf"): 10.0}) == 0.01
    assert histogram_quantile(0.99, {}) is None
    assert quantile_bucket(0.99, buckets) == (0.001, 0.01)
