"""Every example is accepted by the generated CRD schema and its CEL rules, and parses with
the API models to the same object the API server would store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from coxswain.api import ModelService, TrainingJob, TrainingJobSpec
from coxswain.api.common import ApiModel
from crd_schema import admit, validate

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELS: dict[str, type[ApiModel]] = {"TrainingJob": TrainingJob, "ModelService": ModelService}


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def load(path: Path) -> dict[str, Any]:
    """The example's one TrainingJob or ModelService (a file may also hold Kueue's queues)."""
    (ours,) = [d for d in load_all(path) if d.get("kind") in MODELS]
    return ours


def test_the_examples_the_issue_asks_for_exist() -> None:
    names = {p.name for p in example_files()}
    assert {
        "trainingjob-linear.yaml",
        "trainingjob-mlp.yaml",
        "trainingjob-cnn.yaml",
        "trainingjob-custom.yaml",
        "modelservice.yaml",
        "modelservice-canary.yaml",
        "trainingjob-queued.yaml",
    } <= names
    assert (EXAMPLES / "custom_task" / "README.md").is_file()


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_example_is_accepted_by_schema_and_rules(path: Path) -> None:
    errors = validate(load(path))
    assert not errors, "\n".join(str(e) for e in errors)


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_example_parses_to_what_the_api_server_stores(path: Path) -> None:
    manifest = load(path)
    parsed = MODELS[manifest["kind"]].model_validate(manifest)
    # Defaults in the models and in the CRD are one and the same.
    assert parsed.to_dict()["spec"] == admit(manifest)["spec"]


def test_trainer_can_parse_a_bare_spec() -> None:
    spec = load(EXAMPLES / "trainingjob-cnn.yaml")["spec"]
    job = TrainingJobSpec.model_validate(spec)
    assert job.nodes == 2
    assert job.optimization.optimizer.name == "adamw"
    assert job.export is not None and job.export.repository.persistent_volume_claim is not None


def test_queued_example_names_its_local_queue_and_priority_class() -> None:
    docs = load_all(EXAMPLES / "trainingjob-queued.yaml")
    by_kind = {d["kind"]: d for d in docs}
    job = TrainingJob.model_validate(by_kind["TrainingJob"])
    queue = by_kind["LocalQueue"]
    assert job.spec.queue_name == queue["metadata"]["name"]
    assert job.metadata.namespace == queue["metadata"]["namespace"]
    assert queue["spec"]["clusterQueue"] == by_kind["ClusterQueue"]["metadata"]["name"]
    assert job.spec.priority_class_name == by_kind["PriorityClass"]["metadata"]["name"]
    covered = by_kind["ClusterQueue"]["spec"]["resourceGroups"][0]["coveredResources"]
    assert {"cpu", "memory", "nvidia.com/gpu"} <= set(covered), (
        "Kueue refuses pods asking for uncovered resources"
    )
    # A preempted gang resumes from its checkpoint only if the volume outlives the pods.
    assert job.spec.checkpoint.volume.persistent_volume_claim is not None
