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
