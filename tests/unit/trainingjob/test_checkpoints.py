"""Checkpoint storage: a claim per TrainingJob by default, and a condition when they are not durable."""

from __future__ import annotations

from typing import Any

import pytest

from coxswain.api.conditions import TrainingJobReason as R
from coxswain.api.trainingjob import TrainingJob
from coxswain.trainingjob import builders
from coxswain.trainingjob.checkpoints import checkpoint_storage

pytestmark = pytest.mark.unit


def make(**spec: Any) -> TrainingJob:
    base: dict[str, Any] = {"task": {"builtin": {"model": "mlp", "dataset": "digits"}}, "nodes": 1}
    base.update(spec)
    return TrainingJob.model_validate(
        {"metadata": {"name": "mlp", "namespace": "ml", "uid": "u-1234"}, "spec": base}
    )


def volumes(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}


def test_default_job_gets_its_own_claim_from_the_default_storage_class() -> None:
    tj = make()
    storage = checkpoint_storage(tj, default_storage_class="local-path", claim_exists=False)
    assert storage.claim == "mlp-checkpoints" and storage.durable and storage.reason == R.CLAIM_PER_JOB
    claim = builders.build_checkpoint_claim(tj)
    assert claim["metadata"]["name"] == "mlp-checkpoints"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "u-1234"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    job = builders.build_job(tj, 1, storage.claim)
    assert volumes(job)["checkpoints"] == {
        "name": "checkpoints",
        "persistentVolumeClaim": {"claimName": "mlp-checkpoints"},
    }


def test_storage_class_and_size_come_from_the_spec() -> None:
    tj = make(checkpoint={"storageClassName": "fast", "size": "20Gi"})
    storage = checkpoint_storage(tj, default_storage_class=None, claim_exists=False)
    assert storage.durable and storage.claim == "mlp-checkpoints"
    spec = builders.build_checkpoint_claim(tj)["spec"]
    assert spec["storageClassName"] == "fast" and spec["resources"]["requests"]["storage"] == "20Gi"


def test_no_default_storage_class_runs_on_empty_dir_and_says_so() -> None:
    tj = make()
    storage = checkpoint_storage(tj, default_storage_class=None, claim_exists=False)
    assert storage.claim is None and not storage.durable and storage.reason == R.NO_STORAGE_CLASS
    assert "storageClassName" in storage.message
    assert volumes(builders.build_job(tj, 1, storage.claim))["checkpoints"]["emptyDir"] == {}


def test_an_existing_claim_is_kept_even_if_the_default_class_went_away() -> None:
    storage = checkpoint_storage(make(), default_storage_class=None, claim_exists=True)
    assert storage.claim == "mlp-checkpoints" and storage.durable


def test_explicit_empty_dir_is_not_durable() -> None:
    tj = make(checkpoint={"volume": {"emptyDir": {}}})
    storage = checkpoint_storage(tj, default_storage_class="local-path", claim_exists=False)
    assert not storage.durable and storage.reason == R.EMPTY_DIR_VOLUME and storage.claim is None
    assert "spec.checkpoint.volume" in storage.message


def test_multi_node_gang_without_volume_is_not_durable() -> None:
    tj = make(nodes=2)
    storage = checkpoint_storage(tj, default_storage_class="local-path", claim_exists=False)
    assert not storage.durable and storage.claim is None and "ReadWriteMany" in storage.message


def test_own_claim_is_durable_and_mounted_in_a_per_job_directory() -> None:
    tj = make(checkpoint={"volume": {"persistentVolumeClaim": {"claimName": "shared"}}})
    storage = checkpoint_storage(tj, default_storage_class=None, claim_exists=False)
    assert storage.durable and storage.reason == R.OWN_CLAIM and storage.claim is None
    job = builders.build_job(tj, 1, storage.claim)
    assert volumes(job)["checkpoints"]["persistentVolumeClaim"]["claimName"] == "shared"


def test_storage_class_with_own_volume_is_refused() -> None:
    with pytest.raises(ValueError, match="storageClassName"):
        make(checkpoint={"volume": {"emptyDir": {}}, "storageClassName": "fast"})


def test_multi_node_gang_with_read_write_many_mounts_its_claim_in_every_pod() -> None:
    tj = make(nodes=3, checkpoint={"accessMode": "ReadWriteMany"})
    storage = checkpoint_storage(tj, default_storage_class="nfs", claim_exists=False)
    assert storage.durable and storage.claim == "mlp-checkpoints" and storage.reason == R.CLAIM_PER_JOB
    assert "ReadWriteMany" in storage.message and "all 3 pods" in storage.message
    assert "kubectl describe pvc mlp-checkpoints" in storage.message
    assert builders.build_checkpoint_claim(tj)["spec"]["accessModes"] == ["ReadWriteMany"]
    # One template for every node rank: each pod mounts the claim.
    job = builders.build_job(tj, 1, storage.claim)
    assert job["spec"]["completions"] == 3
    assert volumes(job)["checkpoints"]["persistentVolumeClaim"] == {"claimName": "mlp-checkpoints"}


def test_multi_node_gang_with_explicit_read_write_once_is_not_durable() -> None:
    tj = make(nodes=2, checkpoint={"accessMode": "ReadWriteOnce"})
    storage = checkpoint_storage(tj, default_storage_class="local-path", claim_exists=False)
    assert not storage.durable and storage.claim is None and "accessMode" in storage.message


def test_one_node_claim_may_be_read_write_many() -> None:
    tj = make(checkpoint={"accessMode": "ReadWriteMany"})
    assert checkpoint_storage(tj, default_storage_class="nfs", claim_exists=False).durable
    assert builders.build_checkpoint_claim(tj)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_access_mode_with_own_volume_is_refused() -> None:
    with pytest.raises(ValueError, match="accessMode applies to the volume the operator makes"):
        make(checkpoint={"volume": {"emptyDir": {}}, "accessMode": "ReadWriteMany"})


def test_multi_node_fsdp_accepts_a_read_write_many_claim_of_the_operators() -> None:
    make(nodes=2, optimization={"strategy": "fsdp"}, checkpoint={"accessMode": "ReadWriteMany"})
    with pytest.raises(ValueError, match=r"checkpoint\.accessMode ReadWriteMany"):
        make(nodes=2, optimization={"strategy": "fsdp"})
