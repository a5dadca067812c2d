"""Failed requests while a canary is promoted and while a broken one is rolled back, under
steady load. Goal (issue 9): 0 failed requests caused by the rollout itself.

Real `coxswain-server` processes on loopback serve the model; the operator's own planner
(scrape of the servers' /metrics, canary analysis, traffic weights) drives them through the
traffic file they watch, as the ConfigMap volume does on a cluster
(tests/modelservice/serving_harness.py). wrk sends a fixed rate to every server and counts
responses by status and by the version that served them (x-coxswain-version).

Three runs of the same length and rate, side by side:
- baseline: stable v1 only, no change;
- promote: canary v2 (a good model) walked 10 -> 50 -> 100 % by the analysis;
- rollback: canary v3 (loads, then fails every real request) at 10 %, rolled back by the
  analysis. Its own 500s are what the analysis must see; any other failure (503, reset,
  timeout) or any failure after the rollback reached the servers is the rollout's fault.

Run: .venv/bin/python bench/modelservice_rollout.py [--rate 150] [--servers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "modelservice"))

from serving_harness import BODY, INFER_PATH, LocalService, servers, write_repository, write_traffic  # noqa: E402

from coxswain.api.modelservice import CanaryPhase  # noqa: E402

LUA = REPO / "bench" / "_modelservice_count.lua"
INTERVAL = 5
RUN_SECONDS = 30


def start_wrk(url: str, rate: int, seconds: int, body: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "WRK_BODY_FILE": str(body), "WRK_RATE": str(rate), "WRK_CONNECTIONS": "4"}
    return subprocess.Popen(
        ["wrk", "-t1", "-c4", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url + INFER_PATH],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def read_counts(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=120)
    counts: dict[tuple[int, str], int] = {}
    socket_errors = 0
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["count"] and len(parts) == 4:
            counts[(int(parts[1]), parts[2])] = counts.get((int(parts[1]), parts[2]), 0) + int(parts[3])
        elif parts[:1] == ["socket_errors"]:
            socket_errors += int(parts[1])
    return {"counts": counts, "socket_errors": socket_errors}


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[tuple[int, str], int] = {}
    for r in results:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
    return {"counts": counts, "socket_errors": sum(r["socket_errors"] for r in results)}


async def run(kind: str, repo: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    traffic = work / f"{kind}-traffic.json"
    write_traffic(traffic, {"v1": 100})
    versions: dict[str, Any] = {"stable": "v1"}
    if kind != "baseline":
        versions["canary"] = "v2" if kind == "promote" else "v3"
        versions["analysis"] = {"intervalSeconds": INTERVAL, "minRequests": 20, "steps": [10, 50, 100]}
    spec = {"model": {"uri": "file:///models/digits"}, "versions": versions, "autoscaling": {"mode": "none"}}
    body = work / "body.json"
    body.write_text(json.dumps(BODY))
    with servers(repo, traffic, work, args.servers) as pods:
        service = LocalService(spec, pods, traffic)
        wrks = [start_wrk(p.url, args.rate, RUN_SECONDS, body) for p in pods]
        started = time.monotonic()
        decided_at: float | None = None
        applied_at: float | None = None
        while time.monotonic() - started < RUN_SECONDS - 1:
            result = await service.step()
            phase = result.status.canary.phase if result.status.canary else None
            if decided_at is None and phase in (CanaryPhase.PROMOTED, CanaryPhase.ROLLED_BACK):
                decided_at = time.monotonic() - started
            if decided_at is not None and applied_at is None and service.memory.previous:
                canary = versions.get("canary", "")
                want = 100 if phase == CanaryPhase.PROMOTED else 0
                if all(s.weights.get(canary) == want for s in service.memory.previous.values()):
                    applied_at = time.monotonic() - started
            await asyncio.sleep(1.0)
        merged = merge([read_counts(w) for w in wrks])
        await service.close()
    record = service.history[-1].status.canary if service.history else None
    merged.update(
        kind=kind,
        decided_at=decided_at,
        applied_at=applied_at,
        outcome=f"{record.phase}: {record.message}" if record is not None else "no canary",
    )
    return merged


def report(r: dict[str, Any]) -> tuple[int, int]:
    counts = r["counts"]
    total = sum(counts.values()) + r["socket_errors"]
    failed = sum(v for (code, _), v in counts.items() if code != 200) + r["socket_errors"]
    canary_500 = counts.get((500, "v3"), 0)
    rollout_failures = failed - canary_500
    by = ", ".join(f"{code}/{v}={n}" for (code, v), n in sorted(counts.items()))
    print(f"{r['kind']}: requests {total}, failed {failed} ({by}; socket errors {r['socket_errors']})")
    print(f"{r['kind']}: {r['outcome']}")
    if r["decided_at"] is not None:
        print(f"{r['kind']}: decision at {r['decided_at']:.1f} s, weights on every server at "
              f"{r['applied_at'] if r['applied_at'] is None else round(r['applied_at'], 1)} s")  # fmt: skip
    if r["kind"] == "rollback":
        print(f"rollback: broken canary's own 500s before the rollback {canary_500} (what the analysis saw)")
    print(f"{r['kind']}: failed requests caused by the rollout {rollout_failures} (goal 0)")
    return total, rollout_failures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=150, help="requests/s per server (default 150)")
    parser.add_argument("--servers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ms-rollout-") as tmp:
        work = Path(tmp)
        repo = write_repository(work / "repository")
        results = {
            kind: asyncio.run(run(kind, repo, work, args)) for kind in ("baseline", "promote", "rollback")
        }
    figures = {kind: report(r) for kind, r in results.items()}
    base_total = figures["baseline"][0]
    for kind in ("promote", "rollback"):
        total, failures = figures[kind]
        print(f"ratio {kind}_requests_vs_baseline {total / base_total if base_total else 0:.3f}")
        print(f"ratio {kind}_rollout_failures_per_request {failures / total if total else 0:.6f}")
    ok = figures["promote"][1] == 0 and figures["rollback"][1] == 0
    ok = (
        ok
        and results["promote"]["outcome"].startswith("Promoted")
        and results["rollback"]["outcome"].startswith("RolledBack")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
