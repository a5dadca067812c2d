"""Turn two scrapes into load: request rate, errors and p99 per version over the window.

Counters only grow, except when a pod restarts (they start again from zero): a counter
lower than before counts from zero. A pod missing from the earlier scrape is left out of
the window (its counters hold requests from before the window began).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from coxswain.modelservice.scrape import PodSample

# Server-side failures count against a version; 4xx are the client's and 429 is overload,
# which the autoscaler, not the canary analysis, is there to fix.
ERROR_CODE_MIN = 500


@dataclass
class VersionWindow:
    """One version's requests over a window, summed across pods."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.buckets)

    def quantile_bucket(self, q: float) -> tuple[float, float] | None:
        return quantile_bucket(q, self.buckets)


@dataclass
class Window:
    seconds: float
    versions: dict[str, VersionWindow]
    pods: int

    @property
    def requests(self) -> float:
        return sum(v.requests for v in self.versions.values())

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def version(self, name: str) -> VersionWindow:
        return self.versions.get(name) or VersionWindow()

    def p99(self) -> float | None:
        merged: dict[float, float] = {}
        for v in self.versions.values():
            for le, count in v.buckets.items():
                merged[le] = merged.get(le, 0.0) + count
        return histogram_quantile(0.99, merged)


def _delta(new: float, old: float) -> float:
    return new - old if new >= old else new


def window(before: dict[str, PodSample], after: dict[str, PodSample]) -> Window:
    versions: dict[str, VersionWindow] = {}
    seconds: list[float] = []
    pods = 0
    for name, now in after.items():
        then = before.get(name)
        if then is None:
            continue
        pods += 1
        seconds.append(now.at - then.at)
        for (version, code), count in now.requests.items():
            d = _delta(count, then.requests.get((version, code), 0.0))
            vw = versions.setdefault(version, VersionWindow())
            vw.requests += d
            if code.isdigit() and int(code) >= ERROR_CODE_MIN:
                vw.errors += d
        for version, per in now.buckets.items():
            old = then.buckets.get(version, {})
            vw = versions.setdefault(version, VersionWindow())
            for le, count in per.items():
                vw.buckets[le] = vw.buckets.get(le, 0.0) + _delta(count, old.get(le, 0.0))
    return Window(seconds=max(seconds) if seconds else 0.0, versions=versions, pods=pods)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile on cumulative buckets: linear within the bucket."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # the highest finite bound, as Prometheus does
            in_bucket = count - below
            return lower + (le - lower) * ((rank - below) / in_bucket if in_bucket > 0 else 1.0)
        lower, below = le, count
    return lower


def total_inflight(samples: dict[str, PodSample]) -> float:
    return sum(s.inflight for s in samples.values())


def quantile_bucket(q: float, buckets: dict[float, float]) -> tuple[float, float] | None:
    """(lower, upper) bounds of the bucket holding the q-quantile: all a histogram knows."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    lower = 0.0
    for le in bounds:
        if buckets[le] >= q * total:
            return lower, le
        lower = le
    return lower, bounds[-1]
