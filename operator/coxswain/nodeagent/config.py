"""What the agent is told at start-up, and the table from image names to local programs."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Pods of kwok nodes get 10.244.0.0/16 (devcluster.components.POD_CIDR); ours stay clear of it.
DEFAULT_POD_CIDR_BASE = "10.245"


def default_data_dir(node_name: str) -> Path:
    """Not under /tmp: a pod's /tmp is a bind mount and would hide the agent's files from it."""
    root = Path(os.environ.get("COXSWAIN_AGENT_DIR", Path.home() / ".cache" / "coxswain" / "agent"))
    return root / node_name


def agents_root() -> Path:
    return Path(os.environ.get("COXSWAIN_AGENT_DIR", Path.home() / ".cache" / "coxswain" / "agent"))


def default_pod_cidr(node_name: str) -> str:
    """A /24 per node name, so agents of different nodes on one machine do not collide."""
    third = hashlib.sha256(node_name.encode()).digest()[0]
    return f"{DEFAULT_POD_CIDR_BASE}.{third}.0/24"


def short_id(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def bridge_name(node_name: str) -> str:
    # Interface names are at most 15 characters.
    return f"cxbr{short_id(node_name)}"


@dataclass
class AgentConfig:
    node_name: str
    kubeconfig: Path
    data_dir: Path
    pod_cidr: str
    cpu: str = "16"
    memory: str = "64Gi"
    gpus: int = 0
    max_pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    # The bin directory of the Python environment whose packages stand in for the images.
    venv_bin: Path = field(default_factory=lambda: Path(sys.executable).parent)
    # Longest SIGTERM grace the agent grants its pods when it stops itself.
    stop_grace_seconds: float = 10.0

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.pod_cidr, strict=False)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The host's address on the pod bridge: pods' default route, the operator's way in."""
        return self.network.network_address + 1

    @property
    def bridge(self) -> str:
        return bridge_name(self.node_name)

    @property
    def pods_dir(self) -> Path:
        return self.data_dir / "pods"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def volumes_dir(self) -> Path:
        """Local directories standing in for PersistentVolumeClaims without a hostPath PV."""
        return self.data_dir / "claims"


@dataclass(frozen=True)
class ImageEntry:
    """What running an image means here: its default command when the pod gives none."""

    match: str
    default_command: tuple[str, ...]
    description: str


# First match on the image's repository name (no registry, no tag) wins. Every image runs
# with the agent's Python environment first on PATH, so `torchrun`, `python -m
# coxswain_trainer` and `coxswain-server` are this project's installed packages.
IMAGE_TABLE: tuple[ImageEntry, ...] = (
    ImageEntry("trainer", ("python", "-m", "coxswain_trainer"), "coxswain_trainer (torchrun on PATH)"),
    ImageEntry("server", ("coxswain-server",), "coxswain_server's console script"),
)


def image_repository(image: str) -> str:
    """`ghcr.io/coxswain-dev/trainer:0.1.0@sha256:..` -> `trainer`."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def image_entry(image: str) -> ImageEntry | None:
    repo = image_repository(image)
    for entry in IMAGE_TABLE:
        if entry.match in repo:
            return entry
    return None
