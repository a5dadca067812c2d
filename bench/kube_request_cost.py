"""What one API request costs the operator's process: the floor under issue 14's CPU goal.

The operator talks to the API server through lightkube's AsyncClient (httpx over TLS). This
measures, on the local cluster, the client process's CPU per request for what a new
TrainingJob needs: creates (ConfigMap, Service, Job: measured on ConfigMaps of the same
size), a status-sized merge patch, and decoding watch events of pod size (the operator
receives several per TrainingJob: its own, its Job's, each pod's). Sequential and 20 at once
(as in a burst). The sum for one TrainingJob is the floor any Python operator on this client
pays, whatever its design; the goal is 25 ms.

Run: .venv/bin/python bench/kube_request_cost.py [--requests 300]
Prints raw figures, then `ratio <what> <value>` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod

from coxswain.devcluster import DevCluster

REPO = Path(__file__).resolve().parents[1]
EVENTS_PER_TRAININGJOB = (
    12  # an estimate: TrainingJob 2-3, its Job 3-4, each of 2 pods 3 (created, bound, running)
)


async def cpu_per_call(calls: list[Any], concurrency: int) -> float:
    """Process CPU seconds per call, running `calls` (coroutine factories) `concurrency` at a time."""
    started = time.process_time()
    for i in range(0, len(calls), concurrency):
        await asyncio.gather(*(make() for make in calls[i : i + concurrency]))
    return (time.process_time() - started) / len(calls)


async def measure(kubeconfig: Path, requests: int) -> dict[str, float]:
    client = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager="bench")
    ns = f"bench-floor-{uuid.uuid4().hex[:6]}"
    await client.create(Namespace(metadata=ObjectMeta(name=ns)))
    data = {"config.json": json.dumps({"model": {"kind": "mlp", "hidden": [128, 128]}, "x": "y" * 1500})}
    results: dict[str, float] = {}
    patch = {"metadata": {"annotations": {"phase": "Running", "step": "120", "loss": "0.31"}}}
    try:
        for concurrency in (1, 20):
            tag = f"c{concurrency}"
            names = [f"{tag}-{i}" for i in range(requests)]
            results[f"create_{tag}"] = await cpu_per_call(
                [lambda n=n: client.create(ConfigMap(metadata=ObjectMeta(name=n, namespace=ns), data=data)) for n in names],
                concurrency,
            )  # fmt: skip
            results[f"patch_{tag}"] = await cpu_per_call(
                [lambda n=n: client.patch(ConfigMap, n, patch, namespace=ns) for n in names], concurrency
            )
        # a watch event of pod size, decoded as a watch stream delivers it
        pod = Pod.to_dict(  # type: ignore[attr-defined]
            Pod.from_dict(
                {
                    "metadata": {"name": "p", "namespace": ns, "labels": {f"l{i}": "v" for i in range(8)}},
                    "spec": {
                        "containers": [
                            {
                                "name": "trainer",
                                "image": "coxswain/trainer:dev",
                                "env": [{"name": f"E{i}", "value": "x" * 20} for i in range(20)],
                            }
                        ]
                    },
                }
            )
        )
        line = json.dumps({"type": "MODIFIED", "object": pod}).encode()
        started = time.process_time()
        for _ in range(requests * 10):
            json.loads(line)
        results["decode_event"] = (time.process_time() - started) / (requests * 10)
    finally:
        await client.delete(Namespace, ns)
        await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    dev = DevCluster()
    dev.up()
    r = asyncio.run(measure(dev.paths.kubeconfig, args.requests))
    print("# client process CPU per call, ms")
    for name, seconds in r.items():
        print(f"{name:<14} {seconds * 1000:8.3f}")
    # one TrainingJob: 3 creates and 1 status patch in a burst (20 at once), plus its watch events
    floor = 3 * r["create_c20"] + r["patch_c20"] + EVENTS_PER_TRAININGJOB * r["decode_event"]
    print(
        f"floor per TrainingJob (3 creates, 1 status patch, {EVENTS_PER_TRAININGJOB} events): {floor * 1000:.2f} ms"
    )
    print(f"ratio floor_cpu_per_trainingjob_over_goal_25ms {floor * 1000 / 25:.2f}")
    print(f"ratio create_cpu_concurrent_vs_sequential {r['create_c20'] / r['create_c1']:.2f}")


if __name__ == "__main__":
    main()
