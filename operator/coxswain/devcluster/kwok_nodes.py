"""Fake nodes run by kwok: GPU nodes labelled like real ones, and plain CPU nodes.

Only nodes annotated `kwok.x-k8s.io/node: fake` are kwok's; the node agent of issue 8
registers its own Node without that annotation, and kwok leaves it (and its pods) alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_VALUE = "fake"
NODE_POOL_LABEL = "coxswain.dev/node-pool"
GPU_RESOURCE = "nvidia.com/gpu"
STAGES_FILE = Path(__file__).with_name("kwok_stages.yaml")
# Every kwok node carries this label: a nodeSelector keeping a pod off other nodes (the node
# agent's real ones, say) when it shares a cluster with them.
KWOK_NODE_SELECTOR = {"type": "kwok"}

# Annotations a test sets on a pod bound to a kwok node to end it (see kwok_stages.yaml).
EXIT_CODE_ANNOTATION = "coxswain.dev/kwok-exit"
EXIT_REASON_ANNOTATION = "coxswain.dev/kwok-reason"
EXIT_DELAY_ANNOTATION = "coxswain.dev/kwok-exit-delay"


class NodePool(BaseModel):
    """A set of identical fake nodes named `<prefix>-<i>`."""

    prefix: str = Field(description="node names are <prefix>-0, <prefix>-1, ...")
    count: int = Field(ge=0, le=5000)
    pool: str = Field(description=f"value of the {NODE_POOL_LABEL} label")
    cpu: str = "32"
    memory: str = "256Gi"
    pods: int = Field(default=110, ge=1)
    gpus: int = Field(default=0, ge=0, description=f"{GPU_RESOURCE} capacity per node")
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    gpu_memory_mib: int = 81559
    address_prefix: str = Field(
        default="10.1",
        description="node i gets InternalIP <prefix>.<i // 250>.<i % 250 + 1> (fake, never routed)",
    )

    def labels(self, name: str) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": f"kwok-{self.pool}",
            "type": "kwok",
            NODE_POOL_LABEL: self.pool,
        }
        if self.gpus:
            # The labels NVIDIA's GPU feature discovery puts on real GPU nodes, so node
            # selectors written for a real cluster select these nodes too.
            labels |= {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": self.gpu_product,
                "nvidia.com/gpu.count": str(self.gpus),
                "nvidia.com/gpu.memory": str(self.gpu_memory_mib),
            }
        return labels

    def node(self, index: int) -> dict[str, Any]:
        name = f"{self.prefix}-{index}"
        resources: dict[str, str] = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "1Ti",
        }
        if self.gpus:
            resources[GPU_RESOURCE] = str(self.gpus)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": self.labels(name),
                "annotations": {
                    FAKE_NODE_ANNOTATION: FAKE_NODE_VALUE,
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            # kwok's initialize stage keeps the capacity given here.
            "status": {
                "capacity": resources,
                "allocatable": dict(resources),
                "addresses": [
                    {
                        "type": "InternalIP",
                        "address": f"{self.address_prefix}.{index // 250}.{index % 250 + 1}",
                    },
                    {"type": "Hostname", "address": name},
                ],
            },
        }

    def nodes(self) -> list[dict[str, Any]]:
        return [self.node(i) for i in range(self.count)]


GPU_NODE_PREFIX, CPU_NODE_PREFIX = "10.1", "10.2"
# The kwok nodes' InternalIPs: no interface owns them, so devcluster.routes keeps them local.
KWOK_NODE_CIDRS = (f"{GPU_NODE_PREFIX}.0.0/16", f"{CPU_NODE_PREFIX}.0.0/16")


def default_pools(gpu_nodes: int, cpu_nodes: int, gpus_per_node: int = 4) -> list[NodePool]:
    """The pools `coxswain dev cluster up` makes: GPU nodes first, then CPU nodes."""
    return [
        NodePool(
            prefix="kwok-gpu", count=gpu_nodes, pool="gpu", gpus=gpus_per_node, address_prefix=GPU_NODE_PREFIX
        ),
        NodePool(prefix="kwok-cpu", count=cpu_nodes, pool="cpu", address_prefix=CPU_NODE_PREFIX),
    ]
