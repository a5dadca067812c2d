"""Kueue objects for tests and benchmarks: a ClusterQueue with a GPU quota on the kwok GPU
flavor, a LocalQueue pointing at it, PriorityClasses, and readers for Workloads."""

from __future__ import annotations

from typing import Any

from lightkube import ApiError, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.scheduling_v1 import PriorityClass

from coxswain.devcluster.kueue import GROUP, VERSION, ClusterQueue

LocalQueue = create_namespaced_resource(GROUP, VERSION, "LocalQueue", "localqueues")
Workload = create_namespaced_resource(GROUP, VERSION, "Workload", "workloads")


def cluster_queue(name: str, gpus: int, flavor: str = "kwok-gpu") -> Any:
    """A ClusterQueue admitting up to `gpus` GPUs on `flavor`, preempting lower priorities."""
    return ClusterQueue(
        metadata=ObjectMeta(name=name),
        spec={
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [
                {
                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [
                        {
                            "name": flavor,
                            "resources": [
                                {"name": "cpu", "nominalQuota": "1000"},
                                {"name": "memory", "nominalQuota": "4000Gi"},
                                {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)},
                            ],
                        }
                    ],
                }
            ],
        },
    )


def local_queue(name: str, namespace: str, cluster_queue_name: str) -> Any:
    return LocalQueue(
        metadata=ObjectMeta(name=name, namespace=namespace), spec={"clusterQueue": cluster_queue_name}
    )


def ensure_priority_class(client: Client, name: str, value: int) -> None:
    try:
        client.create(PriorityClass(metadata=ObjectMeta(name=name), value=value, preemptionPolicy="Never"))
    except ApiError as e:
        if e.status.code != 409:
            raise


def workload_of_job(client: Client, namespace: str, job_name: str) -> dict[str, Any] | None:
    """The Workload Kueue made for batch Job `job_name` (owned by it), if any."""
    for wl in client.list(Workload, namespace=namespace):
        owners = wl.metadata.ownerReferences or [] if wl.metadata else []
        if any(o.kind == "Job" and o.name == job_name for o in owners):
            return dict(wl)
    return None


def workload_condition(workload: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((workload or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None
