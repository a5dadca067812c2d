"""The local cluster's Kueue: built from the module proxy, CRDs served, webhooks reached on
loopback, and admitting plain Indexed Jobs against quota all-or-nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod
from lightkube.types import CascadeType

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.kueue import ClusterQueue, ResourceFlavor
from kueue_objects import cluster_queue, local_queue, workload_condition, workload_of_job

pytestmark = pytest.mark.cluster


@pytest.fixture
def queue(kueue: ClusterHandle, namespace: str) -> Iterator[str]:
    """A LocalQueue `q` in `namespace` on a ClusterQueue of its own with 4 GPUs."""
    name = f"cq-{uuid.uuid4().hex[:8]}"
    kueue.client.create(cluster_queue(name, gpus=4))
    kueue.client.create(local_queue("q", namespace, name))
    yield "q"
    kueue.client.delete(ClusterQueue, name)


def indexed_job(name: str, pods: int, gpus: int, queue: str) -> Job:
    container = {
        "name": "c",
        "image": "busybox",
        "resources": {
            "requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(gpus)},
            "limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": str(gpus)},
        },
    }
    return Job.from_dict(
        {
            "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": queue}},
            "spec": {
                "completionMode": "Indexed",
                "completions": pods,
                "parallelism": pods,
                "suspend": True,
                "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
            },
        }
    )


def job_pods(client: Any, ns: str, name: str) -> list[Pod]:
    return list(client.list(Pod, namespace=ns, labels={"batch.kubernetes.io/job-name": name}))


def test_kueue_serves_its_crds_webhooks_and_flavors(kueue: ClusterHandle) -> None:
    flavor = kueue.client.get(ResourceFlavor, "kwok-gpu")
    assert flavor["spec"]["nodeLabels"]["coxswain.dev/node-pool"] == "gpu"
    # Real nodes (`--real-nodes N --kueue`) get a flavor too, present whether or not they run.
    real = kueue.client.get(ResourceFlavor, "real-node")
    assert real["spec"]["nodeLabels"] == {"coxswain.dev/real-node": "true"}
    hooks = kueue.client.get(MutatingWebhookConfiguration, "kueue-mutating-webhook-configuration")
    urls = [h.clientConfig.url or "" for h in hooks.webhooks or []]
    assert urls and all(u.startswith("https://127.0.0.1:") for u in urls)
    assert not any("pod" in u.rsplit("/", 1)[-1] for u in urls), "the pod integration is off"


def test_plain_jobs_admitted_within_quota_and_the_rest_wait(
    kueue: ClusterHandle, namespace: str, queue: str
) -> None:
    client, ns = kueue.client, namespace
    for name in ("a", "b", "c"):
        client.create(indexed_job(name, pods=2, gpus=1, queue=queue), namespace=ns)

    def admitted() -> list[str] | None:
        names = [
            j.metadata.name
            for j in client.list(Job, namespace=ns)
            if j.metadata and j.metadata.name and j.spec and not j.spec.suspend
        ]
        return names if len(names) == 2 else None

    running = wait_for(admitted, 90, "two of three Jobs admitted by Kueue")
    (waiting,) = {"a", "b", "c"} - set(running)

    def pending_message() -> str | None:
        cond = workload_condition(workload_of_job(client, ns, waiting), "QuotaReserved")
        return cond["message"] if cond and cond["status"] == "False" and cond.get("message") else None

    message = wait_for(pending_message, 60, f"Kueue's reason for keeping {waiting} waiting")
    assert "nvidia.com/gpu" in message
    assert job_pods(client, ns, waiting) == []  # all-or-nothing: no pod of the waiting gang
    for name in running:
        wait_for(lambda n=name: len(job_pods(client, ns, n)) == 2 or None, 60, f"pods of {name}")
        node_selector = client.get(Job, name, namespace=ns).spec.template.spec.nodeSelector  # type: ignore[union-attr]
        assert node_selector and node_selector.get("coxswain.dev/node-pool") == "gpu"

    # Quota frees when an admitted Job goes: the waiting one is admitted.
    # batch/v1 Jobs orphan their pods unless told otherwise: those pods would keep the quota.
    client.delete(Job, running[0], namespace=ns, cascade=CascadeType.BACKGROUND)
    wait_for(
        lambda: not client.get(Job, waiting, namespace=ns).spec.suspend or None,  # type: ignore[union-attr]
        90,
        f"{waiting} admitted once quota freed",
    )
