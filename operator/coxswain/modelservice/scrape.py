"""Read the server pods' /metrics: in-flight requests, request counts by version and code,
latency histograms by version, and the traffic weights each pod has applied.

A pod that does not answer (starting, stopping, a kwok pod with nothing behind its IP) is
left out of the sample; the autoscaler and the analysis work with whoever answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from coxswain.modelservice import naming
from coxswain.podhttp import METRICS_MAX_BYTES, get_bounded

# Overall time for one pod's answer, body included (see podhttp: bounded reads).
SCRAPE_DEADLINE = 1.5

REQUESTS = "coxswain_server_requests"
DURATION = "coxswain_server_request_duration_seconds"
INFLIGHT = "coxswain_server_inflight_requests"
WEIGHT = "coxswain_server_traffic_weight"


@dataclass(frozen=True)
class PodSample:
    """One pod's counters at one moment (`at`: monotonic seconds)."""

    pod: str
    at: float
    inflight: float = 0.0
    # (version, code) -> requests so far
    requests: dict[tuple[str, str], float] = field(default_factory=dict)
    # version -> {upper bound: cumulative count}
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    # version -> weight the pod applies now (versions it holds loaded)
    weights: dict[str, float] = field(default_factory=dict)


def parse_metrics(pod: str, at: float, text: str) -> PodSample:
    inflight = 0.0
    requests: dict[tuple[str, str], float] = {}
    buckets: dict[str, dict[float, float]] = {}
    weights: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (REQUESTS, DURATION, INFLIGHT, WEIGHT):
            continue
        for s in family.samples:
            labels = s.labels
            if s.name == INFLIGHT:
                inflight += s.value
            elif s.name == REQUESTS + "_total":
                key = (labels.get("version", ""), labels.get("code", ""))
                requests[key] = requests.get(key, 0.0) + s.value
            elif s.name == DURATION + "_bucket":
                le = float(labels.get("le", "+Inf"))
                per = buckets.setdefault(labels.get("version", ""), {})
                per[le] = per.get(le, 0.0) + s.value
            elif s.name == WEIGHT:
                weights[labels.get("version", "")] = s.value
    return PodSample(pod, at, inflight, requests, buckets, weights)


def scrape_targets(pods: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(pod name, IP) of the running, not terminating pods: the ones worth asking."""
    out = []
    for pod in pods:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if not ip or status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
            continue
        out.append((pod["metadata"]["name"], ip))
    return out


async def _scrape_one(http: httpx.AsyncClient, pod: str, url: str) -> PodSample | None:
    body = await get_bounded(http, url, max_bytes=METRICS_MAX_BYTES, deadline=SCRAPE_DEADLINE)
    if body is None:
        return None
    try:
        return parse_metrics(pod, time.monotonic(), body.decode("utf-8", errors="replace"))
    except ValueError:
        return None


async def scrape(
    http: httpx.AsyncClient, targets: list[tuple[str, str]], port: int = naming.HTTP_PORT
) -> dict[str, PodSample]:
    """Samples of every target that answered, all at once (one slow pod delays nobody)."""
    urls = [(pod, f"http://{_host(ip)}:{port}/metrics") for pod, ip in targets]
    results = await asyncio.gather(*(_scrape_one(http, pod, url) for pod, url in urls))
    return {s.pod: s for s in results if s is not None}


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
