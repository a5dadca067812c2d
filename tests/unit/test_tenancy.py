"""The tenancy policy: what a spec may ask of the cluster, refusals naming the field (issue 15)."""

from __future__ import annotations

from typing import Any

import pytest

from coxswain.api.modelservice import ModelServiceSpec
from coxswain.api.trainingjob import TrainingJobSpec
from coxswain.tenancy import TenancyPolicy, policy_from_flags

pytestmark = pytest.mark.unit

TASK = {"builtin": {"model": "mlp", "dataset": "digits"}}


def tj(**spec: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"task": TASK, **spec})


def ms(**spec: Any) -> ModelServiceSpec:
    return ModelServiceSpec.model_validate(
        {"model": {"uri": "pvc://models/digits"}, "versions": {"stable": "v1"}, **spec}
    )


def fields(refusals: list[Any]) -> list[str]:
    return [r.field for r in refusals]


def test_default_policy_admits_the_projects_defaults() -> None:
    policy = TenancyPolicy()
    assert policy.check_trainingjob("team-a", tj()) == []
    assert policy.check_modelservice("team-a", ms()) == []


def test_default_policy_refuses_host_path_repositories_and_checkpoints() -> None:
    spec = tj(
        export={"repository": {"hostPath": {"path": "/"}}},
        checkpoint={"volume": {"hostPath": {"path": "/etc"}}},
    )
    refusals = TenancyPolicy().check_trainingjob("team-a", spec)
    assert fields(refusals) == ["spec.checkpoint.volume.hostPath", "spec.export.repository.hostPath"]
    assert "not allowed" in refusals[0].message and "persistentVolumeClaim" in refusals[0].message
    served = ms(repository={"hostPath": {"path": "/var/lib/kubelet"}})
    assert fields(TenancyPolicy().check_modelservice("team-a", served)) == ["spec.repository.hostPath"]


def test_allowed_host_path_must_stay_under_a_prefix() -> None:
    policy = TenancyPolicy(allow_host_path=True, host_path_prefixes=("/srv/models",))
    inside = tj(export={"repository": {"hostPath": {"path": "/srv/models/team-a"}}})
    assert policy.check_trainingjob("team-a", inside) == []
    for path in ("/srv/models-evil", "/srv/models/../../etc", "/etc"):
        outside = tj(export={"repository": {"hostPath": {"path": path}}})
        (refusal,) = policy.check_trainingjob("team-a", outside)
        assert refusal.field == "spec.export.repository.hostPath" and "/srv/models" in refusal.message


def test_images_outside_the_allowed_prefixes_are_refused() -> None:
    (refusal,) = TenancyPolicy().check_trainingjob("team-a", tj(image="evil.example/miner:1"))
    assert refusal.field == "spec.image" and "ghcr.io/coxswain-dev/" in refusal.message
    (refusal,) = TenancyPolicy().check_modelservice("team-a", ms(image="docker.io/library/busybox"))
    assert refusal.field == "spec.image"
    assert TenancyPolicy(image_prefixes=("*",)).check_modelservice("a", ms(image="any/thing")) == []


def test_secrets_only_when_the_platform_team_allows_the_name_in_that_namespace() -> None:
    policy = policy_from_flags(
        allow_host_path=False,
        host_path_prefixes=[],
        image_prefixes=[],
        secrets=["team-a=model-key", "team-*=serving-token-*"],
    )
    key = {"name": "model-key", "key": "key"}
    spec = ms(encryptionKeySecretRef=key, authTokenSecretRef={"name": "serving-token-1", "key": "t"})
    assert policy.check_modelservice("team-a", spec) == []
    assert fields(policy.check_modelservice("team-b", spec)) == ["spec.encryptionKeySecretRef"]
    other = ms(authTokenSecretRef={"name": "db-password", "key": "p"})
    (refusal,) = policy.check_modelservice("team-a", other)
    assert refusal.field == "spec.authTokenSecretRef" and "db-password" in refusal.message
    export = {
        "repository": {"persistentVolumeClaim": {"claimName": "m"}},
        "encryption": {"keySecretRef": key},
    }
    assert fields(TenancyPolicy().check_trainingjob("team-a", tj(export=export))) == [
        "spec.export.encryption.keySecretRef"
    ]
    assert policy.check_trainingjob("team-a", tj(export=export)) == []


def test_bad_flags_are_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="--allow-secret"):
        policy_from_flags(allow_host_path=False, host_path_prefixes=[], image_prefixes=[], secrets=["x"])
    with pytest.raises(ValueError, match="--host-path-prefix"):
        policy_from_flags(allow_host_path=True, host_path_prefixes=["srv"], image_prefixes=[], secrets=[])


def test_a_namespace_enforcing_restricted_refuses_host_path_up_front() -> None:
    policy = TenancyPolicy(allow_host_path=True)
    spec = tj(export={"repository": {"hostPath": {"path": "/srv/models"}}})
    assert policy.check_trainingjob("dev", spec, pod_security="privileged") == []
    (refusal,) = policy.check_trainingjob("prod", spec, pod_security="restricted")
    assert refusal.field == "spec.export.repository.hostPath" and "restricted" in refusal.message
    served = ms(repository={"hostPath": {"path": "/srv/models"}})
    assert fields(policy.check_modelservice("prod", served, pod_security="baseline")) == [
        "spec.repository.hostPath"
    ]
