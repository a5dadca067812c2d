"""Versions and canary: the traffic weights the pods get, and the analysis that moves them.

How a canary's life is represented (the spec always keeps the user's intent):
- no analysis: the canary gets `canaryPercent` (default 10) for as long as the spec says so;
- with analysis, `status.canary` records {version, phase, step}: Progressing at
  `steps[step]` percent; after each `intervalSeconds` with at least `minRequests` canary
  requests the canary's error rate and p99 are compared with the stable's over that same
  window: within bounds -> next step; the last step passed -> Promoted (canary 100 %,
  stable kept loaded at weight 0 so a later rollback is instant); out of bounds ->
  RolledBack (canary weight 0, still loaded).
- Promoted and RolledBack last until spec.versions.canary changes (or is removed): a new
  canary version starts a new record at the first step. To retry the same version, remove
  the canary and add it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from coxswain.api.conditions import ModelServiceReason as R
from coxswain.api.modelservice import CanaryAnalysis, CanaryPhase, CanaryStatus, Versions
from coxswain.modelservice.load import VersionWindow

# Latency differences smaller than this are no problem for anybody, whatever the ratio:
# a 0.8 ms stable p99 against 1.3 ms is a "ratio" of 1.6.
P99_ABSOLUTE_SLACK_SECONDS = 0.005
# A p99 of a few dozen requests is their slowest one or two: one scheduler hiccup on a busy
# node would roll back a good canary. Below this many canary requests the latency verdict
# waits (an error-rate failure still rolls back at once).
P99_MIN_REQUESTS = 200


class Verdict(StrEnum):
    WAIT = "Wait"
    PASS = "Pass"
    FAIL = "Fail"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    message: str


def first_step(analysis: CanaryAnalysis, canary_percent: int | None) -> int:
    """The first step at or above canaryPercent (the user's starting traffic), else step 0."""
    return analysis.first_step(canary_percent)


def canary_traffic(versions: Versions, record: CanaryStatus | None) -> int:
    """Percent of unversioned requests the canary gets now (given it has one)."""
    analysis = versions.analysis
    if analysis is None or record is None or record.phase is None:
        return versions.effective_canary_percent
    if record.phase == CanaryPhase.ROLLED_BACK:
        return 0
    if record.phase == CanaryPhase.PROMOTED:
        return 100
    step = min(record.step or 0, len(analysis.steps) - 1)
    return analysis.steps[step]


def weights(stable: str, canary: str | None, canary_pct: int) -> dict[str, int]:
    """Traffic file weights. Both versions stay named (loaded) even at weight 0."""
    if canary is None:
        return {stable: 100}
    return {stable: 100 - canary_pct, canary: canary_pct}


def judge(stable: VersionWindow, canary: VersionWindow, analysis: CanaryAnalysis) -> Judgement:
    """Compare the canary with the stable over the same window."""
    if canary.requests < max(analysis.min_requests, 1):
        return Judgement(
            Verdict.WAIT,
            f"{canary.requests:.0f} of {analysis.min_requests} canary requests needed for a verdict",
        )
    c_err, s_err = canary.error_rate, stable.error_rate
    if c_err - s_err > analysis.max_error_rate_increase:
        return Judgement(
            Verdict.FAIL,
            f"canary error rate {c_err:.2%} vs stable {s_err:.2%} ({canary.errors:.0f} of "
            f"{canary.requests:.0f} requests failed; allowed increase {analysis.max_error_rate_increase:.2%})",
        )
    if canary.requests < P99_MIN_REQUESTS:
        return Judgement(
            Verdict.WAIT,
            f"error rate fine ({c_err:.2%} vs {s_err:.2%}); {canary.requests:.0f} of {P99_MIN_REQUESTS} canary "
            "requests needed to judge p99 latency",
        )
    c_p99, s_p99 = canary.quantile(0.99), stable.quantile(0.99)
    c_bucket, s_bucket = canary.quantile_bucket(0.99), stable.quantile_bucket(0.99)
    if c_p99 is not None and s_p99 is not None and c_bucket is not None and s_bucket is not None:
        # A histogram only knows which bucket the p99 is in: the canary fails when even the
        # bottom of its bucket is beyond the top of the stable's times the ratio. Neighbouring
        # buckets (10 and 15 ms are a "ratio" of 1.5) are not evidence of anything.
        slowest_stable, fastest_canary = s_bucket[1], c_bucket[0]
        if (
            fastest_canary > slowest_stable * analysis.max_p99_ratio
            and fastest_canary - slowest_stable > P99_ABSOLUTE_SLACK_SECONDS
        ):
            return Judgement(
                Verdict.FAIL,
                f"canary p99 {c_p99 * 1000:.1f} ms (over {fastest_canary * 1000:g} ms) vs the stable's "
                f"{s_p99 * 1000:.1f} ms (under {slowest_stable * 1000:g} ms): more than {analysis.max_p99_ratio:g}x",
            )
    p99 = f", p99 {c_p99 * 1000:.1f} ms" if c_p99 is not None else ""
    stable_p99 = f" vs {s_p99 * 1000:.1f} ms" if s_p99 is not None and c_p99 is not None else ""
    return Judgement(
        Verdict.PASS,
        f"canary healthy over {canary.requests:.0f} requests: error rate {c_err:.2%} vs {s_err:.2%}"
        f"{p99}{stable_p99}",
    )


@dataclass(frozen=True)
class StepResult:
    record: CanaryStatus
    event_reason: str | None = None
    event_message: str = ""
    warning: bool = False


def advance(record: CanaryStatus, version: str, analysis: CanaryAnalysis, judgement: Judgement) -> StepResult:
    """The record after a verdict on the current step."""
    step = record.step or 0
    if judgement.verdict == Verdict.WAIT:
        return StepResult(record.model_copy(update={"message": judgement.message}))
    if judgement.verdict == Verdict.FAIL:
        message = f"canary {version} rolled back at {analysis.steps[step]}% traffic: {judgement.message}"
        return StepResult(
            CanaryStatus(phase=CanaryPhase.ROLLED_BACK, version=version, step=step, message=message),
            R.CANARY_ROLLED_BACK,
            message + "; it keeps 0% until spec.versions.canary changes",
            warning=True,
        )
    nxt = step + 1
    if nxt >= len(analysis.steps) or analysis.steps[nxt] >= 100 or analysis.steps[step] >= 100:
        message = f"canary {version} promoted to 100% of traffic: {judgement.message}"
        return StepResult(
            CanaryStatus(phase=CanaryPhase.PROMOTED, version=version, step=step, message=message),
            R.CANARY_PROMOTED,
            message + "; set spec.versions.stable to it and remove the canary to make it permanent",
        )
    message = f"canary {version} at {analysis.steps[nxt]}% after passing {analysis.steps[step]}%: {judgement.message}"
    return StepResult(
        CanaryStatus(phase=CanaryPhase.PROGRESSING, version=version, step=nxt, message=message),
        R.CANARY_STEP_PASSED,
        message,
    )


def current_record(
    canary: str | None,
    analysis: CanaryAnalysis | None,
    canary_percent: int | None,
    record: CanaryStatus | None,
) -> CanaryStatus | None:
    """The record for the spec's canary: kept when it is about that version, else a new one."""
    if canary is None or analysis is None:
        return None
    if record is not None and record.version == canary and record.phase is not None:
        return record
    return CanaryStatus(
        phase=CanaryPhase.PROGRESSING,
        version=canary,
        step=first_step(analysis, canary_percent),
        message=f"canary {canary} starting at {analysis.steps[first_step(analysis, canary_percent)]}%",
    )
