"""Operator at scale on kwok nodes: 100 TrainingJobs applied at once on 50 GPU nodes.

Measures, in one run on the local cluster:
- baseline: 100 plain Indexed batch/v1 Jobs (the same pod template) applied at once: time
  from apply to all of a Job's pods created — the floor set by the Job controller;
- coxswain: 100 TrainingJobs applied at once: time from apply to all pods created (the
  operator's hop + the Job controller), p50 and p99; operator CPU per TrainingJob and RSS;
- ModelServices: 100 applied at once, apply -> Deployment created p50, against 100 plain
  Deployments' apply -> ReplicaSet created (the Deployment controller's hop) in the same run;
- RSS of the operator holding --many TrainingJobs (and --report-many, when given).
Goals (issue 14): p50 <= 1.25x and p99 <= 1.5x plain Jobs, <= 25 ms CPU per TrainingJob,
RSS <= 120 MB at 1000 TrainingJobs.

Run: .venv/bin/python bench/operator_scale.py [--jobs 100] [--nodes 50] [--many 1000]
     [--services 100] [--report-many 5000] [--profile operator.prof]
`--profile` runs the operator under cProfile for the whole run and writes its stats there
(`python -m pstats operator.prof`, or the top lines printed at the end).
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
from coxswain.devcluster.kwok_nodes import GPU_NODE_PREFIX, NodePool
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
    """Records when this process first sees each object (pods by default) by owner label, from a watch."""

    def __init__(self, client: Client, namespace: str, label: str, kind: Any = Pod) -> None:
        self.first_seen: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._kind = kind
        self._thread = threading.Thread(target=self._run, args=(client, namespace, label), daemon=True)
        self._thread.start()

    def _run(self, client: Client, namespace: str, label: str) -> None:
        seen: set[str] = set()
        while not self._stop.is_set():
            for _, pod in client.watch(self._kind, namespace=namespace, labels={label: operators.exists()}):
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


def plain_job(manifest: dict[str, Any], name: str, ns: str) -> dict[str, Any]:
    """The baseline: the Indexed Job the operator would make for `manifest`, with no owner, marked
    `bench/owner=<name>` so PodWatch times its pods like a TrainingJob's."""
    tj = TrainingJob.model_validate({**manifest, "metadata": {"name": name, "namespace": ns, "uid": "0"}})
    job = builders.build_job(tj, 1)
    del job["metadata"]["ownerReferences"]
    job["metadata"]["labels"]["bench/owner"] = name
    job["spec"]["template"]["metadata"]["labels"]["bench/owner"] = name
    return job


def wait_for_earlier_runs(client: Client, timeout: float = 300.0) -> None:
    """A cluster reused from an earlier run may still be deleting its namespaces: an operator
    started meanwhile would reconcile their terminating TrainingJobs during the burst."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        left = [
            n.metadata.name
            for n in client.list(Namespace)
            if n.metadata and n.metadata.name and n.metadata.name.startswith("bench-")
        ]
        if not left:
            break
        time.sleep(2)
    else:
        print(f"warning: namespaces of an earlier run still terminating after {timeout:.0f} s: {left}")
    waited = time.monotonic() - began
    if waited > 1:
        print(f"waited {waited:.0f} s for an earlier run's namespaces to go")


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


def wait_handled(client: Client, ns: str, count: int, timeout: float = 900) -> int:
    """Wait until `count` TrainingJobs of `ns` have a phase (the operator made a pass on each).

    From a watch: listing a thousand TrainingJobs every few seconds loads the API server the
    operator is being measured against (and timed out on a busy machine)."""
    handled: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(handled) < count and time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # a watch cut short (timeout, busy server) restarts
            for _, obj in client.watch(TRAININGJOB_RESOURCE, namespace=ns, server_timeout=60):
                if (obj.get("status") or {}).get("phase"):
                    handled.add(obj["metadata"]["name"])
                if len(handled) >= count or time.monotonic() > deadline:
                    break
    return len(handled)


def modelservice(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "pvc://models/bench"},
            "repository": {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "replicas": 1,
            "autoscaling": {"mode": "none"},
            "nodeSelector": {"coxswain.dev/node-pool": POOL},
            "versions": {"stable": "v1"},
        },
    }


def services_burst(client: Client, count: int, namespaces: list[str]) -> tuple[float, float]:
    """(plain Deployment apply -> ReplicaSet p50, ModelService apply -> Deployment p50), seconds."""
    from lightkube.resources.apps_v1 import Deployment, ReplicaSet

    from coxswain.modelservice import naming as ms_naming

    ns = make_namespace(client, "bench-deploy-")
    namespaces.append(ns)
    watch = PodWatch(client, ns, "bench/owner", ReplicaSet)
    deployments = []
    for i in range(count):
        labels = {"bench/owner": f"d{i}"}
        deployments.append((f"d{i}", from_dict({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"d{i}", "labels": labels},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "bench"}]}}},
        })))  # fmt: skip
    applied = apply_all(deployments, lambda obj: client.create(obj, namespace=ns))
    base = wait_all(watch, applied, 1, 300)
    ns = make_namespace(client, "bench-ms-")
    namespaces.append(ns)
    watch = PodWatch(client, ns, ms_naming.LABEL_MODELSERVICE, Deployment)
    time.sleep(2)
    from coxswain.kube import MODELSERVICE_RESOURCE

    items = [(f"s{i}", modelservice(f"s{i}")) for i in range(count)]
    applied = apply_all(items, lambda obj: client.create(MODELSERVICE_RESOURCE(obj), namespace=ns))
    ours = wait_all(watch, applied, 1, 300)
    print(
        f"{count} Deployments: apply->ReplicaSet p50 {statistics.median(base):.3f} s p99 {percentile(base, 0.99):.3f} s; "
        f"{count} ModelServices: apply->Deployment p50 {statistics.median(ours):.3f} s p99 {percentile(ours, 0.99):.3f} s"
    )
    return statistics.median(base), statistics.median(ours)


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


def control_plane_cpu(dev: DevCluster) -> float:
    """CPU seconds so far of the API server and etcd: the writes every object costs."""
    state = dev.state()
    pids = [p.pid for p in (state.processes if state else []) if p.name in ("kube-apiserver", "etcd")]
    return sum(proc_stats(pid)[0] for pid in pids)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--many", type=int, default=1000)
    parser.add_argument("--gang", type=int, default=2, help="pods per job")
    parser.add_argument("--services", type=int, default=100, help="ModelServices applied at once (0: skip)")
    parser.add_argument("--report-many", type=int, default=0, help="also report RSS holding this many")
    parser.add_argument(
        "--report-suspended",
        action="store_true",
        help="the TrainingJobs beyond --many are made suspended (no Job, no pod), so that the control "
        "plane of a small machine does not have to run thousands more pods",
    )
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the operator into this file")
    args = parser.parse_args()

    dev = DevCluster()
    dev.up()
    client = make_client(dev.paths.kubeconfig, timeout=60)
    wait_established(client, apply_crds(client, REPO / "crds"))
    # Addresses in the kwok nodes' range, which the cluster routes nowhere (devcluster.routes).
    pool = NodePool(
        prefix="bench-gpu", count=args.nodes, pool=POOL, gpus=8, pods=250, address_prefix=GPU_NODE_PREFIX
    )
    wait_for_earlier_runs(client)
    create_nodes(client, [pool])
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
        profile = ["-m", "cProfile", "-o", str(args.profile)] if args.profile else []
        op = subprocess.Popen(
            [
                sys.executable,
                *profile,
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
            jobs.append((f"b{i}", plain_job(trainingjob(f"b{i}", args.gang, 2), f"b{i}", ns)))
        # Decode in this thread: lightkube imports resource modules lazily, and concurrent first
        # imports from many threads crashed the interpreter here.
        decoded = [(owner, from_dict(obj)) for owner, obj in jobs]
        api_a = control_plane_cpu(dev)
        applied = apply_all(decoded, lambda obj: client.create(obj, namespace=ns))
        base = wait_all(watch, applied, args.gang, 300)
        api_base = control_plane_cpu(dev) - api_a
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
        api_a = control_plane_cpu(dev)
        items = [(f"t{i}", trainingjob(f"t{i}", args.gang, 2)) for i in range(args.jobs)]
        applied = apply_all(items, lambda obj: client.create(TRAININGJOB_RESOURCE(obj), namespace=ns))
        ours = wait_all(watch, applied, args.gang, 300)
        cpu_b, rss_b = proc_stats(op.pid)
        api_ours = control_plane_cpu(dev) - api_a
        p50, p99 = statistics.median(ours), percentile(ours, 0.99)
        print(
            f"coxswain TrainingJobs: {len(ours)} jobs x {args.gang} pods, apply->pods p50 {p50:.3f} s p99 {p99:.3f} s (goal: p50 <= 1.25x, p99 <= 1.5x the plain Jobs)"
        )
        cpu_ms = (cpu_b - cpu_a) * 1000 / args.jobs
        print(
            f"operator during the burst: cpu {cpu_b - cpu_a:.2f} s ({cpu_ms:.1f} ms per TrainingJob), rss {rss_b:.1f} MB"
        )
        # on a small machine the API server and etcd share the cores with everything else: the
        # objects a TrainingJob adds (itself, its status, ConfigMap, Service and its slice) cost there
        print(
            f"API server + etcd CPU until all pods exist: plain Jobs {api_base:.2f} s, TrainingJobs {api_ours:.2f} s"
        )

        ms_p50 = deploy_p50 = None
        if args.services:
            deploy_p50, ms_p50 = services_burst(client, args.services, namespaces)

        held: dict[int, float] = {}
        made = args.jobs
        for target in [args.many] + ([args.report_many] if args.report_many > args.many else []):
            suspend = args.report_suspended and target > args.many
            more = [(f"m{i}", trainingjob(f"m{i}", 1, 0, suspend=suspend)) for i in range(made, target)]
            apply_all(more, lambda obj: client.create(TRAININGJOB_RESOURCE(obj), namespace=ns))
            made = target
            handled = wait_handled(client, ns, target)
            time.sleep(5)
            cpu_c, held[target] = proc_stats(op.pid)
            print(
                f"operator with {handled} TrainingJobs{f' ({target - args.many} suspended)' if suspend else ''}: "
                f"rss {held[target]:.1f} MB (goal <= 120 MB at 1000), cpu total {cpu_c - cpu0:.1f} s"
            )
        print(f"ratio apply_to_pods_p50_vs_plain_jobs {p50 / statistics.median(base):.2f}")
        print(f"ratio apply_to_pods_p99_vs_plain_jobs {p99 / percentile(base, 0.99):.2f}")
        print(f"ratio p50_vs_plain_jobs_over_goal_1.25 {p50 / statistics.median(base) / 1.25:.2f}")
        print(f"ratio p99_vs_plain_jobs_over_goal_1.5 {p99 / percentile(base, 0.99) / 1.5:.2f}")
        print(f"ratio cpu_per_trainingjob_over_goal_25ms {cpu_ms / 25:.2f}")
        print(f"ratio control_plane_cpu_trainingjobs_vs_plain_jobs {api_ours / max(api_base, 1e-6):.2f}")
        for count, rss in held.items():
            print(f"ratio rss_{count}_jobs_over_goal_120MB {rss / 120:.2f}")
        if ms_p50 is not None and deploy_p50 is not None:
            print(
                f"ratio modelservice_to_deployment_p50_vs_deployment_to_replicaset {ms_p50 / deploy_p50:.2f}"
            )
    finally:
        op.terminate()
        op.wait(timeout=60)
        if args.profile:
            import pstats

            print(f"operator profile: {args.profile} (top 25 by cumulative time)")
            pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(25)
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
