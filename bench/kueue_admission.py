"""Queued TrainingJobs against plain Indexed Jobs, both in a real Kueue, on kwok GPU nodes.

Measures, in one run on the local cluster (`coxswain dev cluster up --kueue` is done here):
- baseline: N plain Indexed batch/v1 Jobs (the operator's own pod template) with Kueue's queue
  label, applied while their ClusterQueue has no GPU quota, so all wait as Workloads; then the
  quota is raised at T0 and each Job's time from T0 to all its pods created is taken (Kueue's
  admission + the Job controller);
- coxswain: the same with N TrainingJobs (`spec.queueName`): T0 to all pods created (Kueue,
  the operator seeing the admission, the Job controller);
- apply -> Queued for the TrainingJobs (the operator's hop to a queued, suspended Job).

Run: .venv/bin/python bench/kueue_admission.py [--jobs 50] [--gang 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.codecs import from_dict
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node
from lightkube.types import PatchType

from coxswain.devcluster import DevCluster
from coxswain.devcluster.bootstrap import create_nodes, make_client
from coxswain.devcluster.crds import apply_crds, wait_established
from coxswain.devcluster.kueue import GROUP, VERSION, ClusterQueue, ResourceFlavor
from coxswain.devcluster.kwok_nodes import NodePool
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.trainingjob import naming
from operator_scale import PodWatch, apply_all, make_namespace, percentile, plain_job, wait_all

REPO = Path(__file__).resolve().parents[1]
POOL = "bench-kueue"
LocalQueue = create_namespaced_resource(GROUP, VERSION, "LocalQueue", "localqueues")
Workload = create_namespaced_resource(GROUP, VERSION, "Workload", "workloads")


def queue_objects(name: str, namespace: str) -> tuple[Any, Any]:
    """A ClusterQueue with no GPU quota yet (everything waits) and a LocalQueue `q` on it."""
    cq = ClusterQueue(
        metadata=ObjectMeta(name=name),
        spec={
            "namespaceSelector": {},
            "resourceGroups": [
                {
                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [
                        {
                            "name": POOL,
                            "resources": [
                                {"name": "cpu", "nominalQuota": "10000"},
                                {"name": "memory", "nominalQuota": "100000Gi"},
                                {"name": "nvidia.com/gpu", "nominalQuota": "0"},
                            ],
                        }
                    ],
                }
            ],
        },
    )
    lq = LocalQueue(metadata=ObjectMeta(name="q", namespace=namespace), spec={"clusterQueue": name})
    return cq, lq


def free_quota(client: Client, name: str, gpus: int) -> float:
    cq = client.get(ClusterQueue, name)
    spec = cq["spec"]
    spec["resourceGroups"][0]["flavors"][0]["resources"][2]["nominalQuota"] = str(gpus)
    client.patch(ClusterQueue, name, {"spec": spec}, patch_type=PatchType.MERGE)
    return time.monotonic()


def trainingjob(name: str, gang: int) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "task": {"builtin": {"model": "cnn", "dataset": "digits"}},
            "nodes": gang,
            "resources": {"gpus": 1, "cpu": "100m", "memory": "128Mi"},
            "queueName": "q",
        },
    }


def wait_count(probe: Any, want: int, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = probe()
        if got >= want:
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}: {got}/{want}")


def workloads(client: Client, ns: str) -> int:
    return len(list(client.list(Workload, namespace=ns)))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--gang", type=int, default=2, help="pods per job, 1 GPU each")
    args = parser.parse_args()
    gpus = args.jobs * args.gang

    dev = DevCluster()
    dev.up(kueue=True, timeout=300)
    client = make_client(dev.paths.kubeconfig, timeout=60)
    wait_established(client, apply_crds(client, REPO / "crds"))
    nodes = -(-gpus // 8)
    create_nodes(
        client, [NodePool(prefix=POOL, count=nodes, pool=POOL, gpus=8, pods=250, address_prefix="10.8")]
    )
    client.apply(
        ResourceFlavor(metadata=ObjectMeta(name=POOL), spec={"nodeLabels": {"coxswain.dev/node-pool": POOL}}),
        force=True,
    )
    print(f"nodes: {nodes} kwok GPU nodes (8 GPUs each); {args.jobs} jobs x {args.gang} pods x 1 GPU")

    env = {"KUBECONFIG": str(dev.paths.kubeconfig)}
    log = Path(tempfile.mkdtemp(prefix="coxswain-bench-")) / "operator.log"
    with open(log, "wb") as out:
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
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    namespaces: list[str] = []
    queues: list[str] = []
    try:
        time.sleep(3)
        # Baseline: plain Indexed Jobs in Kueue, the operator's pod template.
        ns = make_namespace(client, "bench-kq-base-")
        namespaces.append(ns)
        cq_name = f"bench-{uuid.uuid4().hex[:6]}"
        queues.append(cq_name)
        cq, lq = queue_objects(cq_name, ns)
        client.create(cq)
        client.create(lq)
        watch = PodWatch(client, ns, "bench/owner")
        jobs = []
        for i in range(args.jobs):
            jobs.append((f"b{i}", from_dict(plain_job(trainingjob(f"b{i}", args.gang), f"b{i}", ns))))
        apply_all(jobs, lambda obj: client.create(obj, namespace=ns))
        wait_count(lambda: workloads(client, ns), args.jobs, "plain Jobs' Workloads")
        t0 = free_quota(client, cq_name, gpus)
        base = wait_all(watch, dict.fromkeys((o for o, _ in jobs), t0), args.gang, 300)
        print(
            f"baseline plain Jobs in Kueue: quota freed -> all pods p50 {statistics.median(base):.3f} s "
            f"p99 {percentile(base, 0.99):.3f} s"
        )
        client.delete(Namespace, ns)
        time.sleep(5)

        ns = make_namespace(client, "bench-kq-tj-")
        namespaces.append(ns)
        cq_name = f"bench-{uuid.uuid4().hex[:6]}"
        queues.append(cq_name)
        cq, lq = queue_objects(cq_name, ns)
        client.create(cq)
        client.create(lq)
        watch = PodWatch(client, ns, naming.LABEL_TRAININGJOB)
        time.sleep(2)
        items = [(f"t{i}", trainingjob(f"t{i}", args.gang)) for i in range(args.jobs)]
        applied = apply_all(items, lambda obj: client.create(TRAININGJOB_RESOURCE(obj), namespace=ns))

        queued_at: dict[str, float] = {}

        def queued() -> int:
            now = time.monotonic()
            for o in client.list(TRAININGJOB_RESOURCE, namespace=ns):
                name = o["metadata"]["name"]
                if (o.get("status") or {}).get("phase") == "Queued":
                    queued_at.setdefault(name, now)
            return len(queued_at)

        wait_count(queued, args.jobs, "TrainingJobs Queued")
        wait_count(lambda: workloads(client, ns), args.jobs, "TrainingJobs' Workloads")
        to_queued = [queued_at[n] - applied[n] for n in applied]
        t0 = free_quota(client, cq_name, gpus)
        ours = wait_all(watch, dict.fromkeys(applied, t0), args.gang, 300)
        p50, p99 = statistics.median(ours), percentile(ours, 0.99)
        print(
            f"coxswain TrainingJobs: apply -> Queued p50 {statistics.median(to_queued):.3f} s (polled at 2 Hz)"
        )
        print(f"coxswain TrainingJobs in Kueue: quota freed -> all pods p50 {p50:.3f} s p99 {p99:.3f} s")
        print(f"ratio kueue_admit_to_pods_p50_vs_plain_jobs {p50 / statistics.median(base):.2f}")
        print(f"ratio kueue_admit_to_pods_p99_vs_plain_jobs {p99 / percentile(base, 0.99):.2f}")
    finally:
        op.terminate()
        op.wait(timeout=30)
        for ns in namespaces:
            with contextlib.suppress(Exception):
                client.delete(Namespace, ns)
        for name in queues:
            with contextlib.suppress(Exception):
                client.delete(ClusterQueue, name)
        for node in client.list(Node, labels={"coxswain.dev/node-pool": POOL}):
            if node.metadata and node.metadata.name:
                client.delete(Node, node.metadata.name)
        print(f"operator log: {log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
