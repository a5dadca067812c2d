"""The builtin autoscaler's decision: pure, so every rule is a unit test.

- desired = ceil(load / target per replica), within [floor, maxReplicas];
- up at once: a load step is answered on the next scrape;
- down only after the load has stayed low for scaleDownDelaySeconds, and then only to the
  highest replica count asked for during that time (a brief dip does not shed pods that
  the next burst needs);
- with no metrics at all (no pod answered) nothing changes but the bounds.

The floor is minReplicas. At zero there is no pod whose load could be read: the
activator (coxswain.activator) holds the next request and raises spec.replicas through
the scale subresource, and from then on the rules above apply again. While no activator
pod is known (chart `activator.enabled: false`, or its namespace not watched) nothing
would answer at zero, so the floor stays at one. A new service starts
with max(minReplicas, 1) replicas, so that it shows at once whether its model loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coxswain.api.modelservice import Autoscaling, ScaleMetric


@dataclass(frozen=True)
class LowDemand:
    """Since when the load has asked for fewer replicas, and the most it asked for since."""

    since: float
    peak: int


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    low: LowDemand | None  # carry to the next decision

    def changed(self, current: int) -> bool:
        return self.replicas != current


NO_ACTIVATOR = (
    "minReplicas is 0 but no activator is known to hold requests at zero, so 1 replica is kept; "
    "enable the chart's activator (activator.enabled) and, with watchNamespaces, list the "
    "activator's namespace"
)


def floor_replicas(auto: Autoscaling, activator: bool = True) -> int:
    """`activator`: an activator pod is known (without one a service at zero refuses requests)."""
    return auto.min_replicas if activator else max(auto.min_replicas, 1)


def initial_replicas(auto: Autoscaling) -> int:
    return max(auto.min_replicas, 1)


def needed_replicas(load: float, auto: Autoscaling) -> int:
    return math.ceil(round(load / auto.target.value, 6))


def _unit(auto: Autoscaling) -> str:
    return "in-flight requests" if auto.target.metric == ScaleMetric.INFLIGHT else "requests/s"


def decide(
    current: int,
    load: float | None,
    auto: Autoscaling,
    low: LowDemand | None,
    now: float,
    quiet_since: float | None = None,
    activator: bool = True,
) -> Decision:
    """`load`: total over all pods in the target's unit (None: no pod answered).

    `quiet_since`: since when the servers have counted no request at all (None: they have
    counted some in the last window, or no window is known yet). Only that lets the count
    drop to zero: in-flight requests are a snapshot, and a steady trickle of quick requests
    shows 0 in flight at nearly every scrape while it still needs a pod. The delay before
    zero counts from the last request, not from the first quiet scrape.

    `activator`: whether an activator pod is known; without one the floor is 1 (see above).
    """
    lo, hi = floor_replicas(auto, activator), auto.max_replicas
    if current < lo:
        if lo > auto.min_replicas:
            return Decision(lo, f"{NO_ACTIVATOR}: raised to {lo}", None)
        return Decision(lo, f"below minReplicas {auto.min_replicas}: raised to {lo}", None)
    if current > hi:
        return Decision(hi, f"above maxReplicas {hi}: lowered to {hi}", None)
    if load is None:
        return Decision(current, "no server answered /metrics; keeping the replica count", low)
    want = needed_replicas(load, auto)
    if want == 0 and quiet_since is None:
        want = 1
    bounded = min(max(want, lo), hi)
    target = f"{auto.target.value:g} {_unit(auto)} per replica"
    seen = f"{load:.1f} {_unit(auto)} for a target of {target}"
    if bounded > current:
        capped = f" (capped at maxReplicas {hi})" if want > hi else ""
        return Decision(bounded, f"{seen}: needs {want}{capped}", None)
    if bounded == current:
        return Decision(current, f"{seen}: {current} is right", None)
    # Lower demand: wait it out, remembering the highest count asked for meanwhile.
    since = quiet_since if bounded == 0 and quiet_since is not None else now
    low = LowDemand(since, bounded) if low is None else LowDemand(low.since, max(low.peak, bounded))
    waited = now - low.since
    if waited < auto.scale_down_delay_seconds:
        return Decision(
            current,
            f"{seen}: {bounded} would do; scaling down after {auto.scale_down_delay_seconds} s of lower "
            f"demand ({waited:.0f} s so far)",
            low,
        )
    to = low.peak
    return Decision(
        to,
        f"{seen}: at most {to} needed for the last {waited:.0f} s (scaleDownDelaySeconds "
        f"{auto.scale_down_delay_seconds})",
        None,
    )
