"""The API server sends the operator only its own children: every object (and pod) the
builders make matches its kind's server-side label selector, or the operator would never
see it."""

from __future__ import annotations

from typing import Any

import pytest

from coxswain.api.modelservice import ModelService
from coxswain.api.trainingjob import TrainingJob
from coxswain.modelservice import builders as ms_builders
from coxswain.modelservice.source import ServedModel, resolve
from coxswain.trainingjob import builders as tj_builders
from coxswain.watch_only import SERVER_SELECTORS

pytestmark = pytest.mark.unit


def matches(selector: str, labels: dict[str, str]) -> bool:
    """The selector forms SERVER_SELECTORS uses: `key` (exists) and `key=value`, comma-joined."""
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if key not in labels or (value and labels[key] != value):
            return False
    return True


def selector(group: str, version: str, plural: str) -> str:
    return SERVER_SELECTORS[(group, version, plural)]


def labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"]["labels"])


def test_training_jobs_and_their_pods_match_the_selectors() -> None:
    tj = TrainingJob.model_validate(
        {
            "metadata": {"name": "t", "namespace": "ns", "uid": "u"},
            "spec": {"task": {"builtin": {"model": "mlp", "dataset": "digits"}}, "nodes": 2},
        }
    )
    job = tj_builders.build_job(tj, 1)
    assert matches(selector("batch", "v1", "jobs"), labels(job))
    assert matches(selector("", "v1", "pods"), labels(job["spec"]["template"]))


def test_model_service_children_and_their_pods_match_the_selectors() -> None:
    ms = ModelService.model_validate(
        {
            "metadata": {"name": "s", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {
                "model": {"uri": "pvc://models/digits"},
                "repository": {"persistentVolumeClaim": {"claimName": "models"}},
                "versions": {"stable": "v1"},
            },
        }
    )
    model = resolve(ms, None)
    assert isinstance(model, ServedModel)
    deployment = ms_builders.build_deployment(ms, model, replicas=1)
    assert matches(selector("apps", "v1", "deployments"), labels(deployment))
    # The Deployment controller gives its ReplicaSets and pods the template's labels.
    template = labels(deployment["spec"]["template"])
    assert matches(selector("apps", "v1", "replicasets"), template)
    assert matches(selector("", "v1", "pods"), template)
    assert matches(selector("", "v1", "services"), labels(ms_builders.build_service(ms)))
    assert matches(selector("", "v1", "configmaps"), labels(ms_builders.build_traffic_config_map(ms, {})))
    hpa = ms_builders.build_hpa(ms)
    assert matches(selector("autoscaling", "v2", "horizontalpodautoscalers"), labels(hpa))
    # EndpointSlices: the Service's labels are copied onto the endpointslice controller's
    # slices; the operator's own slice (scale from zero) carries the label itself.
    slices = selector("discovery.k8s.io", "v1", "endpointslices")
    assert matches(slices, labels(ms_builders.build_service(ms)))
    assert matches(slices, labels(ms_builders.build_activator_slice(ms, [("10.0.0.9", 8080)])))
