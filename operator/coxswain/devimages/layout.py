"""Reading and annotating the OCI image layout that `make images` writes (docs/images.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REF_NAME = "org.opencontainers.image.ref.name"
# `ctr images import` names an image after this annotation, as given; without it, after
# ref.name with a made-up prefix.
CONTAINERD_NAME = "io.containerd.image.name"


def _blob(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hexdigest


def _index(layout: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((layout / "index.json").read_text())
    return loaded


def annotate_index(layout: Path) -> None:
    """Give every manifest in index.json the full image reference under both names."""
    index = _index(layout)
    for manifest in index.get("manifests", []):
        annotations = manifest.setdefault("annotations", {})
        name = annotations.get(REF_NAME) or annotations.get(CONTAINERD_NAME)
        if not name:
            raise ValueError(f"{layout}/index.json: manifest {manifest.get('digest')} carries no name")
        annotations[REF_NAME] = annotations[CONTAINERD_NAME] = name
    (layout / "index.json").write_text(json.dumps(index))


def image_sizes(layout: Path) -> dict[str, tuple[str, int]]:
    """ref -> (manifest digest, bytes of config and layers): the image's unpacked-tar size."""
    sizes: dict[str, tuple[str, int]] = {}
    for entry in _index(layout).get("manifests", []):
        manifest = json.loads(_blob(layout, entry["digest"]).read_text())
        total = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
        sizes[entry["annotations"][REF_NAME]] = (entry["digest"], total)
    return sizes


def layout_bytes(layout: Path) -> int:
    """Disk the layout takes: shared layers count once."""
    return sum(p.stat().st_size for p in (layout / "blobs").rglob("*") if p.is_file())


def referenced_blobs(layout: Path) -> set[str]:
    """Digests of every manifest, config and layer the index names."""
    digests: set[str] = set()
    for entry in _index(layout).get("manifests", []):
        digests.add(entry["digest"])
        manifest = json.loads(_blob(layout, entry["digest"]).read_text())
        digests.add(manifest["config"]["digest"])
        digests.update(layer["digest"] for layer in manifest["layers"])
    return digests


def seed_blobs(layout: Path, previous: Path) -> None:
    """Hard-link the previous layout's blobs in, so pushing an unchanged layer (torch) writes nothing."""
    source = previous / "blobs" / "sha256"
    target = layout / "blobs" / "sha256"
    target.mkdir(parents=True, exist_ok=True)
    for blob in source.iterdir():
        if not (target / blob.name).exists():
            os.link(blob, target / blob.name)


def drop_unreferenced_blobs(layout: Path) -> None:
    keep = {digest.split(":", 1)[1] for digest in referenced_blobs(layout)}
    for blob in (layout / "blobs" / "sha256").iterdir():
        if blob.name not in keep:
            blob.unlink()
