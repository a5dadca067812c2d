"""The operator's TrainingJob on the real node, all of it in containers: the operator from its
image (installed by helm, its ServiceAccount and RBAC), two torchrun pods of the trainer image
(uid 1000, read-only root, CPU limits) meeting through cluster DNS, progress pulled by the
operator pod over the pod network, the model exported.

The images come from `make images` (built by the `real_images` fixture when the tree changed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from lightkube.resources.core_v1 import Pod
from realnode_harness import image_ref, operator_log

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.devcluster.realnode import REAL_NODE_LABEL
from coxswain.devimages import BuiltImages
from coxswain.kube import TRAININGJOB_RESOURCE

pytestmark = pytest.mark.realnode

IMAGES_CACHE = Path.home() / ".cache" / "coxswain" / "images"


def trainer_layout() -> tuple[Path, str] | None:
    """The newest complete OCI layout holding a trainer image, and that image's name (for the
    suites that import only the trainer image)."""
    layouts = sorted(IMAGES_CACHE.glob("oci-*/index.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for index in layouts:
        for manifest in json.loads(index.read_text()).get("manifests", []):
            name = (manifest.get("annotations") or {}).get("io.containerd.image.name", "")
            if "/trainer:" in name:
                return index.parent, name
    return None


def cnn_job(image: str, root: Path) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "cnn"},
        "spec": {
            "image": image,
            "task": {
                "builtin": {"model": "cnn", "dataset": "digits", "channels": [8, 16], "hiddenSizes": [32]}
            },
            "nodes": 2,
            "procsPerNode": 1,
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            # The real node has this machine's 2 CPUs: one per rank.
            "resources": {"cpu": "900m", "memory": "1Gi"},
            "optimization": {"batchSize": 128, "epochs": 30},
            "checkpoint": {
                "intervalSteps": 100,
                "keep": 1,
                "volume": {"hostPath": {"path": str(root / "ckpt")}},
            },
            "export": {"repository": {"hostPath": {"path": str(root / "models")}}, "modelName": "digits-cnn"},
            "failurePolicy": {"maxRestarts": 1, "backoffSeconds": 1, "maxBackoffSeconds": 2},
        },
    }


def test_two_rank_trainingjob_succeeds_in_containers(
    real_cluster: ClusterHandle, real_images: BuiltImages, release_namespace: str, tmp_path: Path
) -> None:
    op_ns = release_namespace
    trainer_image = image_ref(real_images, "trainer")
    for sub in ("ckpt", "models"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub).chmod(0o777)  # the trainer runs as uid 1000
    tmp_path.chmod(0o755)
    client = real_cluster.client
    applied = time.monotonic()
    client.create(TRAININGJOB_RESOURCE(cnn_job(trainer_image, tmp_path)), namespace=op_ns)  # type: ignore[call-overload]

    def all_running() -> bool:
        pods = list(client.list(Pod, namespace=op_ns))
        return len(pods) == 2 and all(p.status is not None and p.status.phase == "Running" for p in pods)

    wait_for(all_running, 300, "both rank pods Running")
    print(f"\nTrainingJob apply -> 2 pods Running: {time.monotonic() - applied:.1f} s")

    def finished() -> dict[str, Any] | None:
        status = dict(client.get(TRAININGJOB_RESOURCE, "cnn", namespace=op_ns).get("status") or {})
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    final = wait_for(finished, 900, "the TrainingJob to finish")
    print(f"TrainingJob apply -> {final['phase']}: {time.monotonic() - applied:.1f} s")
    assert final["phase"] == "Succeeded", f"{final}\n{operator_log(real_cluster)}"
    assert final["exportedModel"]["modelName"] == "digits-cnn"
    assert list((tmp_path / "models" / "digits-cnn").iterdir())
