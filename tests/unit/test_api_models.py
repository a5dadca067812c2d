"""The pydantic models refuse what the CRDs refuse, naming the field, so that a spec parsed
outside the cluster (by the trainer, say) is judged as the API server would judge it."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from coxswain import api
from coxswain.api import ModelService, TrainingJob, TrainingJobSpec, common, modelservice, trainingjob
from coxswain.api.common import ApiModel
from invalid_manifests import InvalidCase, bases, invalid_manifests

pytestmark = pytest.mark.unit

MODELS: dict[str, type[ApiModel]] = {"TrainingJob": TrainingJob, "ModelService": ModelService}
CASES = invalid_manifests()


def loc_path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def names_field(error: dict[str, Any], field: str) -> bool:
    """The error is at `field`, or at its parent object with a message naming the field."""
    where = loc_path(error["loc"])
    if where == "" and field in error["msg"]:  # a rule on the whole object (metadata.name)
        return True
    if where == field or where.startswith(field + "[") or where.startswith(field + "."):
        return True
    if field.startswith(where + ".") or field.startswith(where + "["):
        last = field[len(where) :].lstrip(".").split(".")[0].split("[")[0]
        return last in error["msg"] or (where == field.rsplit(".", 1)[0] and "exactly one" in error["msg"])
    return False


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_models_refuse_every_invalid_manifest_naming_the_field(case: InvalidCase) -> None:
    with pytest.raises(ValidationError) as refused:
        MODELS[case.manifest["kind"]].model_validate(case.manifest)
    errors = refused.value.errors()
    assert any(names_field(e, case.field) for e in errors), (
        f"{case.id}: no error names {case.field}: {[(loc_path(e['loc']), e['msg']) for e in errors]}"
    )


def test_every_base_parses() -> None:
    for kind, _, manifest in bases():
        MODELS[kind].model_validate(manifest)


def _api_models() -> list[type[ApiModel]]:
    found = []
    for module in (common, trainingjob, modelservice):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, ApiModel) and obj is not ApiModel and obj.__module__ == module.__name__:
                found.append(obj)
    return found


@pytest.mark.parametrize("model", _api_models(), ids=lambda m: m.__name__)
def test_every_model_and_field_is_documented(model: type[BaseModel]) -> None:
    assert model.__doc__ and model.__doc__.strip(), f"{model.__name__} has no docstring"
    for name, info in model.model_fields.items():
        assert info.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize("model", _api_models(), ids=lambda m: m.__name__)
def test_every_rule_but_transitions_has_a_python_twin(model: type[ApiModel]) -> None:
    for rule in model.cel_rules:
        assert rule.is_transition or rule.check is not None, f"{model.__name__}: {rule.rule}"
        assert not rule.is_transition or rule.check is None


def test_cross_field_rule_errors_name_the_field_and_the_allowed_values() -> None:
    spec = {
        "task": {"builtin": {"model": "mlp", "dataset": "digits"}},
        "evaluation": {"earlyStopping": {"metric": "r2", "mode": "min"}},
    }
    with pytest.raises(ValidationError) as refused:
        TrainingJobSpec.model_validate(spec)
    (error,) = refused.value.errors()
    assert loc_path(error["loc"]) == "evaluation.earlyStopping"
    assert "mode must be max for metric accuracy or r2" in error["msg"]


def test_snake_case_and_camel_case_both_populate() -> None:
    by_alias = TrainingJobSpec.model_validate({"task": {"custom": {"module": "m"}}, "procsPerNode": 2})
    by_name = TrainingJobSpec(
        task=trainingjob.Task(custom=trainingjob.CustomTask(module="m")), procs_per_node=2
    )
    assert by_alias == by_name
    assert by_alias.to_dict()["procsPerNode"] == 2


def test_unknown_fields_are_refused_in_python() -> None:
    with pytest.raises(ValidationError, match="nodez"):
        TrainingJobSpec.model_validate({"task": {"custom": {"module": "m"}}, "nodez": 2})


def test_full_object_with_status_parses() -> None:
    obj = {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "j", "namespace": "ns", "generation": 2, "managedFields": [{}]},
        "spec": {"task": {"builtin": {"model": "linear", "dataset": "diabetes"}}},
        "status": {
            "phase": "Running",
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "PodsRunning",
                    "message": "2/2 pods running",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "observedGeneration": 2,
                }
            ],
            "progress": {"step": 10, "totalSteps": 100, "percent": 10.0, "state": "training"},
        },
    }
    job = TrainingJob.model_validate(obj)
    assert job.metadata.name == "j"
    assert job.status is not None and job.status.progress is not None
    assert job.status.progress.percent == 10.0


def test_group_version_and_names() -> None:
    assert api.GROUP == "coxswain.dev"
    assert api.VERSION == "v1alpha1"
    assert api.API_VERSION == "coxswain.dev/v1alpha1"
    assert api.TRAININGJOB_SHORT_NAMES == ("tj",)
    assert api.MODELSERVICE_SHORT_NAMES == ("ms",)
    assert api.MODELSERVICE_PLURAL == "modelservices"


def test_quantities_accept_integers_and_refuse_zero() -> None:
    res = common.TrainingResources.model_validate({"cpu": 2, "memory": "512Mi"})
    assert res.cpu == "2"
    with pytest.raises(ValidationError, match="positive"):
        common.TrainingResources.model_validate({"cpu": "0"})


def test_effective_canary_percent_follows_the_documented_defaults() -> None:
    serving = trainingjob.Serving(model_service="digits")
    assert serving.effective_canary_percent == 10
    assert trainingjob.Serving(model_service="d", rollout="stable").effective_canary_percent is None
    versions = modelservice.Versions(stable="v1")
    assert versions.effective_canary_percent == 0
    assert modelservice.Versions(stable="v1", canary="v2").effective_canary_percent == 10
    analysed = modelservice.Versions.model_validate(
        {"stable": "v1", "canary": "v2", "analysis": {"steps": [5, 50, 100]}}
    )
    assert analysed.effective_canary_percent == 5
