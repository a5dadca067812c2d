"""Names the operator builds children from are checked at the API (issue 15)."""

from __future__ import annotations

from typing import Any

import pytest

from coxswain.api.modelservice import MAX_NAME_LENGTH as MS_MAX
from coxswain.api.modelservice import ModelService
from coxswain.api.trainingjob import MAX_ATTEMPTS, MAX_NAME_LENGTH, MAX_NODES, TrainingJob
from coxswain.trainingjob import naming
from crd_schema import validate

pytestmark = pytest.mark.unit


def tj(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"task": {"builtin": {"model": "mlp", "dataset": "digits"}}},
    }


def ms(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "pvc://models/digits"}, "versions": {"stable": "v1"}},
    }


def test_longest_name_leaves_room_for_every_attempt_and_rank() -> None:
    longest = "a" * MAX_NAME_LENGTH
    assert len(naming.pod_hostname(longest, MAX_ATTEMPTS, MAX_NODES - 1)) == 63


@pytest.mark.parametrize("name", ["my.job", "a" * 62, "9lives", "Upper", "ends-"])
def test_bad_names_are_refused_by_schema_and_model(name: str) -> None:
    for manifest, model in ((tj(name), TrainingJob), (ms(name), ModelService)):
        errors = [str(e) for e in validate(manifest)]
        assert any("metadata.name" in e and "DNS-1035" in e for e in errors), errors
        with pytest.raises(ValueError, match=r"metadata\.name"):
            model.model_validate(manifest)


def test_good_names_pass() -> None:
    for manifest in (tj("a" * MAX_NAME_LENGTH), ms("b" * MS_MAX), tj("digits-2"), ms("m")):
        assert validate(manifest) == []
