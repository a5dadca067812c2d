"""Installing the project's CRDs (crds/*.yaml) into a cluster and waiting until they serve."""

from __future__ import annotations

import time
from pathlib import Path

from lightkube import ApiError, Client
from lightkube.codecs import load_all_yaml
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition


class CRDError(RuntimeError):
    """A CRD was refused or did not become Established."""


def apply_crds(client: Client, directory: Path) -> list[str]:
    """Server-side apply every CustomResourceDefinition in `directory`/*.yaml (sorted by file
    name). An empty or missing directory applies nothing. Returns the CRD names applied."""
    names: list[str] = []
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        for obj in load_all_yaml(path.read_text()):
            if not isinstance(obj, CustomResourceDefinition):
                continue  # kustomization files and the like are not ours to apply
            name = obj.metadata.name if obj.metadata else None
            if not name:
                raise CRDError(f"{path.name}: a CustomResourceDefinition without metadata.name")
            try:
                client.apply(obj, force=True)
            except ApiError as e:
                raise CRDError(f"{path.name}: the API server refused CRD {name}: {e.status.message}") from e
            names.append(name)
    return names


def _established(crd: CustomResourceDefinition) -> bool:
    conditions = crd.status.conditions if crd.status and crd.status.conditions else []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def wait_established(client: Client, names: list[str], timeout: float = 30.0) -> None:
    """Wait until every named CRD is Established (its REST endpoints serve requests)."""
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending and time.monotonic() < deadline:
        pending = [n for n in pending if not _established(client.get(CustomResourceDefinition, n))]
        if pending:
            time.sleep(0.1)
    if pending:
        raise CRDError(f"CRDs not Established after {timeout:.0f} s: {pending}")
