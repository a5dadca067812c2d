"""The Node object and its Lease, as a kubelet registers and heartbeats them."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from typing import Any

from coxswain.nodeagent.config import AgentConfig
from coxswain.nodeagent.kubelet_api import KUBELET_PORT

GPU_RESOURCE = "nvidia.com/gpu"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
# Renew well inside the lease (the kubelet renews every 10 s for a 40 s lease).
RENEW_SECONDS = 10.0
STATUS_SECONDS = 30.0
AGENT_ANNOTATION = "coxswain.dev/node-agent"


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def capacity(cfg: AgentConfig) -> dict[str, str]:
    out = {"cpu": cfg.cpu, "memory": cfg.memory, "pods": str(cfg.max_pods), "ephemeral-storage": "100Gi"}
    if cfg.gpus:
        out[GPU_RESOURCE] = str(cfg.gpus)
    return out


def node_manifest(cfg: AgentConfig) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": cfg.node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": _arch(),
        "node.kubernetes.io/instance-type": "coxswain-agent",
        **cfg.labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.node_name,
            "labels": labels,
            # Not kwok's annotation: kwok must leave this node alone.
            "annotations": {AGENT_ANNOTATION: f"pid {os.getpid()} data {cfg.data_dir}"},
        },
        "spec": {"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr]},
    }


def node_status(
    cfg: AgentConfig,
    ready: bool = True,
    message: str = "the coxswain node agent is running pods",
    since: str | None = None,
) -> dict[str, Any]:
    """`since`: when the conditions last changed (the agent's start); heartbeats keep it."""
    now = micro_now()[:19] + "Z"
    since = since or now

    def cond(type_: str, status: bool, reason: str, msg: str) -> dict[str, Any]:
        return {
            "type": type_,
            "status": "True" if status else "False",
            "reason": reason,
            "message": msg,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since,
        }

    uname = platform.uname()
    return {
        "capacity": capacity(cfg),
        "allocatable": capacity(cfg),
        "conditions": [
            cond("Ready", ready, "KubeletReady" if ready else "KubeletNotReady", message),
            cond("MemoryPressure", False, "KubeletHasSufficientMemory", "no memory pressure"),
            cond("DiskPressure", False, "KubeletHasNoDiskPressure", "no disk pressure"),
            cond("PIDPressure", False, "KubeletHasSufficientPID", "no PID pressure"),
        ],
        # No Hostname address: the API server would prefer it for `kubectl logs`, and the
        # node name does not resolve on the host.
        "addresses": [{"type": "InternalIP", "address": str(cfg.gateway)}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
        "nodeInfo": {
            "machineID": "coxswain-agent",
            "systemUUID": cfg.node_name,
            "bootID": str(os.getpid()),
            "kernelVersion": uname.release,
            "osImage": "coxswain node agent (local processes)",
            "containerRuntimeVersion": "coxswain-agent://0.1.0",
            "kubeletVersion": "v1.35.0-coxswain-agent",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": _arch(),
        },
    }


def lease_manifest(cfg: AgentConfig, node_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": cfg.node_name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": cfg.node_name, "uid": node_uid}],
        },
        "spec": {
            "holderIdentity": cfg.node_name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_now(),
        },
    }
