"""kind-config.yaml uses only fields of kind's v1alpha4 Cluster config, with valid values.

The field table below is written from kind's published v1alpha4 types
(sigs.k8s.io/kind/pkg/apis/config/v1alpha4): kind decodes its config strictly, so an unknown
or misspelt field makes `kind create cluster` fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

CONFIG = Path(__file__).resolve().parents[2] / "kind-config.yaml"

# field -> expected type; nested tables for structs; (list, table) for lists of structs.
MOUNT = {
    "containerPath": str,
    "hostPath": str,
    "readOnly": bool,
    "selinuxRelabel": bool,
    "propagation": str,
}
PORT_MAPPING = {"containerPort": int, "hostPort": int, "listenAddress": str, "protocol": str}
PATCH_JSON6902 = {"group": str, "version": str, "kind": str, "patch": str}
NODE = {
    "role": str,
    "image": str,
    "labels": dict,
    "extraMounts": (list, MOUNT),
    "extraPortMappings": (list, PORT_MAPPING),
    "gpus": str,
    "kubeadmConfigPatches": (list, str),
    "kubeadmConfigPatchesJSON6902": (list, PATCH_JSON6902),
}
NETWORKING = {
    "ipFamily": str,
    "apiServerPort": int,
    "apiServerAddress": str,
    "podSubnet": str,
    "serviceSubnet": str,
    "disableDefaultCNI": bool,
    "kubeProxyMode": str,
    "dnsSearch": (list, str),
}
CLUSTER = {
    "kind": str,
    "apiVersion": str,
    "name": str,
    "nodes": (list, NODE),
    "networking": NETWORKING,
    "featureGates": dict,
    "runtimeConfig": dict,
    "kubeadmConfigPatches": (list, str),
    "kubeadmConfigPatchesJSON6902": (list, PATCH_JSON6902),
    "containerdConfigPatches": (list, str),
    "containerdConfigPatchesJSON6902": (list, str),
}
ENUMS = {
    "nodes[].role": {"control-plane", "worker"},
    "networking.ipFamily": {"ipv4", "ipv6", "dual"},
    "networking.kubeProxyMode": {"iptables", "ipvs", "nftables", "none"},
    "nodes[].extraMounts[].propagation": {"None", "HostToContainer", "Bidirectional"},
    "nodes[].extraPortMappings[].protocol": {"TCP", "UDP", "SCTP"},
}


def check(value: Any, table: Any, path: str) -> list[str]:
    """Problems of `value` against a field table (a type, a struct table or (list, item))."""
    if isinstance(table, tuple):
        if not isinstance(value, list):
            return [f"{path}: must be a list"]
        return [p for item in value for p in check(item, table[1], f"{path}[]")]
    if isinstance(table, dict):
        if not isinstance(value, dict):
            return [f"{path}: must be a mapping"]
        problems = [f"{path}.{k}: not a v1alpha4 field" for k in value if k not in table]
        for key, sub in value.items():
            if key in table:
                problems += check(sub, table[key], f"{path}.{key}" if path else key)
        return problems
    if (table is int and isinstance(value, bool)) or not isinstance(value, table):
        return [f"{path}: must be {table.__name__}"]
    allowed = ENUMS.get(path)
    if allowed is not None and value not in allowed:
        return [f"{path}: {value!r} is not one of {sorted(allowed)}"]
    return []


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return loaded


def test_every_field_is_a_v1alpha4_field(config: dict[str, Any]) -> None:
    assert check(config, CLUSTER, "") == []


def test_the_checker_catches_a_misspelt_field() -> None:
    assert check({"nodes": [{"rol": "worker"}]}, CLUSTER, "") == ["nodes[].rol: not a v1alpha4 field"]
    assert check({"nodes": [{"role": "master"}]}, CLUSTER, "")


def test_it_is_a_kind_cluster_config(config: dict[str, Any]) -> None:
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"


def test_one_control_plane_and_two_gpu_workers(config: dict[str, Any]) -> None:
    roles = [n.get("role", "control-plane") for n in config["nodes"]]
    assert roles.count("control-plane") == 1
    workers = [n for n in config["nodes"] if n.get("role") == "worker"]
    assert len(workers) == 2
    for worker in workers:
        labels = worker["labels"]
        assert labels["nvidia.com/gpu.present"] == "true"
        # Node labels are strings; YAML would make an unquoted true a boolean.
        assert all(isinstance(v, str) for v in labels.values())
