"""Canary traffic, analysis, rollback and promotion with real servers and the operator's
planner (tests/modelservice/serving_harness.py says how the cluster's part is played)."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from serving_harness import BODY, INFER_PATH, LocalService, servers, write_traffic

from coxswain.api.modelservice import CanaryPhase


class SteadyLoad:
    """Threads sending unversioned requests until stopped; records (code, version) of each."""

    def __init__(self, urls: list[str], threads: int = 2) -> None:
        self.urls = urls
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.urls[index % len(self.urls)], timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(INFER_PATH, json=BODY)
                    item = (r.status_code, r.headers.get("x-coxswain-version", ""))
                except httpx.HTTPError as exc:
                    item = (0, type(exc).__name__)
                with self._lock:
                    self.results.append(item)
                time.sleep(0.002)  # a steady stream, not saturation: the analysis is what is tested

    def __enter__(self) -> SteadyLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    async def wait_for(self, count: int) -> None:
        while len(self.snapshot()) < count:  # noqa: ASYNC110 - threads fill it, no event to wait on
            await asyncio.sleep(0.2)

    def snapshot(self) -> list[tuple[int, str]]:
        with self._lock:
            return list(self.results)


def canary_spec(canary: str, **analysis: Any) -> dict[str, Any]:
    versions: dict[str, Any] = {"stable": "v1", "canary": canary}
    if analysis:
        versions["analysis"] = analysis
    else:
        versions["canaryPercent"] = 10
    return {"model": {"uri": "file:///models/digits"}, "versions": versions, "autoscaling": {"mode": "none"}}


async def drive(service: LocalService, until: Any, within: float, period: float = 0.5) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await service.step()
        if until(result):
            return
        await asyncio.sleep(period)
    last = service.history[-1].status.canary if service.history else None
    raise AssertionError(f"not reached within {within}s; canary status: {last}")


async def test_ten_percent_canary_gets_ten_percent_of_requests(repository: Path, tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.json"
    write_traffic(traffic, {"v1": 100})
    with servers(repository, traffic, tmp_path, 2) as pods:
        service = LocalService(canary_spec("v2"), pods, traffic)
        await drive(service, lambda p: all(s.weights.get("v2") == 10 for s in p.memory.previous.values()), 20)
        with SteadyLoad([p.url for p in pods], threads=4) as load:
            await load.wait_for(4000)
        results = load.snapshot()
        await service.close()
    counts = collections.Counter(v for code, v in results if code == 200)
    assert sum(counts.values()) == len(results), collections.Counter(code for code, _ in results)
    share = counts["v2"] / len(results)
    # 4000 requests: the binomial standard deviation of a 10% share is 0.5 points.
    assert 0.08 <= share <= 0.12, counts


async def test_broken_canary_is_rolled_back_automatically(repository: Path, tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.json"
    write_traffic(traffic, {"v1": 100})
    spec = canary_spec("v3", intervalSeconds=5, minRequests=20, steps=[10, 50, 100])
    with servers(repository, traffic, tmp_path, 1) as pods, SteadyLoad([pods[0].url]) as load:
        service = LocalService(spec, pods, traffic)
        started = time.monotonic()
        await drive(service, lambda p: p.status.canary.phase == CanaryPhase.ROLLED_BACK, 45)
        rolled_back_after = time.monotonic() - started
        record = service.history[-1].status.canary
        assert record is not None and record.version == "v3" and "error rate" in record.message
        assert service.history[-1].weights == {"v1": 100, "v3": 0}
        # Once the server applied the weights, no request fails any more.
        await drive(service, lambda p: all(s.weights.get("v3") == 0 for s in p.memory.previous.values()), 10)
        mark = len(load.snapshot())
        await asyncio.sleep(2.0)
        after = load.snapshot()[mark:]
        await drive(service, lambda p: True, 1)
        await service.close()
    failed_before = sum(1 for code, _ in load.snapshot() if code != 200)
    assert failed_before > 0  # the canary did break requests while it had traffic
    assert after and all(code == 200 and v == "v1" for code, v in after), collections.Counter(after)
    degraded = next(c for c in service.history[-1].status.conditions if c.type == "Degraded")
    assert degraded.reason == "CanaryRolledBack"
    assert rolled_back_after < 20, rolled_back_after


async def test_promotion_under_steady_load_fails_no_request(repository: Path, tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.json"
    write_traffic(traffic, {"v1": 100})
    spec = canary_spec("v2", intervalSeconds=5, minRequests=10, steps=[10, 50, 100])
    with (
        servers(repository, traffic, tmp_path, 2) as pods,
        SteadyLoad([p.url for p in pods], threads=2) as load,
    ):
        service = LocalService(spec, pods, traffic)
        await drive(service, lambda p: p.status.canary.phase == CanaryPhase.PROMOTED, 60)
        await drive(
            service, lambda p: all(s.weights.get("v2") == 100 for s in p.memory.previous.values()), 10
        )
        mark = len(load.snapshot())
        await asyncio.sleep(1.0)
        await service.close()
    results = load.snapshot()
    steps = [p.status.canary.step for p in service.history if p.status.canary is not None]
    assert sorted(set(steps)) == [0, 1]
    assert len(results) > 200
    assert all(code == 200 for code, _ in results), collections.Counter(code for code, _ in results)
    assert {v for _, v in results[mark:]} == {"v2"}
