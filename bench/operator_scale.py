"""Operator at scale on kwok nodes: 100 TrainingJobs applied at once on 50 GPU nodes.

Measures, in one run on the local cluster:
- baseline: 100 plain Indexed batch/v1 Jobs (the same pod template) applied at once: time
  from apply to all of a Job's pods created — the floor set by the Job controller;
- coxswain: 100 TrainingJobs applied at once: time from apply to all pods created (the
  operator's hop + the Job controller), p50 and p99; operator CPU seconds and RSS;
- RSS of the operator holding 1000 TrainingJobs.
Goals (issue 7): p50 <= 1 s, p99 <= 3 s, RSS <= 150 MB.

Run: .venv/bin/python bench/operator_scale.py [--jobs 100] [--nodes 50] [--many 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lightkube import Client, operators
from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, Pod, ServiceAccount

from coxswain.api.trainingjob import TrainingJob
from coxswain.devcluster import DevCluster
from coxswain.devcluster.bootstrap import create_nodes, make_client
from coxswain.devcluster.crds import apply_crds, wait_established
from coxswain.devcluster.kwok_nodes import NodePool
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.trainingjob import builders, naming

REPO = Path(__file__).resolve().parents[1]
POOL = "bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def trainingjob(name: str, nodes: int, gpus: int, suspend: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "task": {"builtin": {"model": "cnn", "dataset": "digits"}},
            "nodes": nodes,
            "resources": {"gpus": gpus, "cpu": "100m", "memory": "128Mi"},
            "nodeSelector": {"coxswain.dev/node-pool": POOL},
            "suspend": suspend,
        },
    }


class PodWatch:
    """Records when this process first sees each pod (by owner label), from a watch."""

    def __init__(self, client: Client, namespace: str, label: str) -> None:
        self.first_seen: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client, namespace, label), daemon=True)
        self._thread.start()

    def _run(self, client: Client, namespace: str, label: str) -> None:
        seen: set[str] = set()
        while not self._stop.is_set():
            for _, pod in client.watch(Pod, namespace=namespace, labels={label: operators.exists()}):
                meta = pod.metadata
                if meta is None or meta.name in seen or meta.labels is None:
                    continue
                seen.add(meta.name or "")
                self.first_seen.setdefault(meta.labels[label], []).append(time.monotonic())
                if self._stop.is_set():
                    return

    def done(self, owner: str, count: int) -> float | None:
        times = self.first_seen.get(owner, [])
        return max(times) if len(times) >= count else None


def wait_all(watch: PodWatch, applied: dict[str, float], count: int, timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latencies = [d - applied[o] for o in applied if (d := watch.done(o, count)) is not None]
        if len(latencies) == len(applied):
            return latencies
        time.sleep(0.2)
    raise SystemExit(f"timed out: {len(latencies)}/{len(applied)} created all pods in {timeout} s")


def make_namespace(client: Client, prefix: str) -> str:
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.get(ServiceAccount, "default", namespace=name)
            return name
        except Exception:
            time.sleep(0.2)
    return name


def apply_all(objects: list[tuple[str, Any]], create: Any) -> dict[str, float]:
    applied: dict[str, float] = {}

    def one(item: tuple[str, Any]) -> None:
        create(item[1])
        applied[item[0]] = time.monotonic()

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, objects))
    return applied


def proc_stats(pid: int) -> tuple[float, float]:
    """(cpu seconds, RSS MB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS")
    )
    return cpu, rss_kb / 1024


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--many", type=int, default=1000)
    parser.add_argument("--gang", type=int, default=2, help="pods per job")
    args = parser.parse_args()

    dev = DevCluster()
    dev.up()
    client = make_client(dev.paths.kubeconfig, timeout=60)
    wait_established(client, apply_crds(client, REPO / "crds"))
    create_nodes(
        client,
        [NodePool(prefix="bench-gpu", count=args.nodes, pool=POOL, gpus=8, pods=250, address_prefix="10.9")],
    )
    ready = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        nodes = client.list(Node, labels={"coxswain.dev/node-pool": POOL})
        ready = sum(
            1
            for n in nodes
            if any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
        )  # type: ignore[union-attr]
        if ready >= args.nodes:
            break
        time.sleep(1)
    print(f"nodes: {ready} kwok GPU nodes (8 GPUs each) ready")

    env = {**os.environ, "KUBECONFIG": str(dev.paths.kubeconfig)}
    log = Path(tempfile.mkdtemp(prefix="coxswain-bench-")) / "operator.log"
    with open(log, "wb") as out:
        # Cluster-wide, as most installs run it: a namespace glob would add kopf's namespace
        # discovery to the first burst in a namespace made just before it.
        op = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coxswain",
                "operator",
                "run",
                "--standalone",
                "--metrics-port",
                "0",
                "--health-port",
                "0",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    namespaces: list[str] = []
    try:
        time.sleep(3)
        cpu0, rss0 = proc_stats(op.pid)
        print(f"operator idle: rss {rss0:.1f} MB")

        # Baseline: the Job controller alone, same pod template, applied at once.
        ns = make_namespace(client, "bench-base-")
        namespaces.append(ns)
        watch = PodWatch(client, ns, "bench/owner")
        jobs = []
        for i in range(args.jobs):
            tj = TrainingJob.model_validate(
                {
                    **trainingjob(f"b{i}", args.gang, 2),
                    "metadata": {"name": f"b{i}", "namespace": ns, "uid": "0"},
                }
            )
            job = builders.build_job(tj, 1)
            del job["metadata"]["ownerReferences"]
            job["metadata"]["labels"]["bench/owner"] = f"b{i}"
            job["spec"]["template"]["metadata"]["labels"]["bench/owner"] = f"b{i}"
            jobs.append((f"b{i}", job))
        # Decode in this thread: lightkube imports resource modules lazily, and concurrent first
        # imports from many threads crashed the interpreter here.
        decoded = [(owner, from_dict(obj)) for owner, obj in jobs]
        applied = apply_all(decoded, lambda obj: client.create(obj, namespace=ns))
        base = wait_all(watch, applied, args.gang, 300)
        print(
            f"baseline batch/v1 Jobs: {len(base)} jobs x {args.gang} pods, apply->pods p50 {statistics.median(base):.3f} s p99 {percentile(base, 0.99):.3f} s"
        )
        client.delete(Namespace, ns)
        time.sleep(5)

        ns = make_namespace(client, "bench-tj-")
        namespaces.append(ns)
        watch = PodWatch(client, ns, naming.LABEL_TRAININGJOB)
        time.sleep(2)  # the operator's watches see the new namespace, as for one that existed
        cpu_a, _ = proc_stats(op.pid)
        items = [(f"t{i}", trainingjob(f"t{i}", args.gang, 2)) for i in range(args.jobs)]
        applied = apply_all(items, lambda obj: client.create(TRAININGJOB_RESOURCE(obj), namespace=ns))
        ours = wait_all(watch, applied, args.gang, 300)
        cpu_b, rss_b = proc_stats(op.pid)
        p50, p99 = statistics.median(ours), percentile(ours, 0.99)
        print(
            f"coxswain TrainingJobs: {len(ours)} jobs x {args.gang} pods, apply->pods p50 {p50:.3f} s p99 {p99:.3f} s (goal p50 <= 1 s, p99 <= 3 s)"
        )
        print(f"operator during the burst: cpu {cpu_b - cpu_a:.2f} s, rss {rss_b:.1f} MB")

        more = [(f"m{i}", trainingjob(f"m{i}", 1, 0)) for i in range(args.many - args.jobs)]
        apply_all(more, lambda obj: client.create(TRAININGJOB_RESOURCE(obj), namespace=ns))
        deadline = time.monotonic() + 600
        handled = 0
        while time.monotonic() < deadline:
            handled = sum(
                1
                for o in client.list(TRAININGJOB_RESOURCE, namespace=ns)
                if (o.get("status") or {}).get("phase")
            )
            if handled >= args.many:
                break
            time.sleep(2)
        time.sleep(5)
        cpu_c, rss_c = proc_stats(op.pid)
        print(
            f"operator with {handled} TrainingJobs: rss {rss_c:.1f} MB (goal <= 150 MB), cpu total {cpu_c - cpu0:.1f} s"
        )
        print(f"ratio apply_to_pods_p50_vs_plain_jobs {p50 / statistics.median(base):.2f}")
        print(f"ratio apply_to_pods_p99_vs_plain_jobs {p99 / percentile(base, 0.99):.2f}")
        print(f"ratio p50_over_goal_1s {p50 / 1.0:.2f}")
        print(f"ratio p99_over_goal_3s {p99 / 3.0:.2f}")
        print(f"ratio rss_{args.many}_jobs_over_goal_150MB {rss_c / 150:.2f}")
    finally:
        op.terminate()
        op.wait(timeout=30)
        for ns in namespaces:
            with contextlib.suppress(Exception):
                client.delete(Namespace, ns)
        for node in client.list(Node, labels={"coxswain.dev/node-pool": POOL}):
            if node.metadata and node.metadata.name:
                client.delete(Node, node.metadata.name)
        print(f"operator log: {log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
