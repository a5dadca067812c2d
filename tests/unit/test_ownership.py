"""Ownership is the ownerReference chain, never labels (issue 15)."""

from __future__ import annotations

from typing import Any

import pytest

from coxswain.ownership import controller_uid, slim_owner, trusted_serving, trusted_training

pytestmark = pytest.mark.unit

LABELS = {"coxswain.dev/trainingjob": "cnn"}


def obj(uid: str, controller: str | None, **labels: str) -> dict[str, Any]:
    refs = [{"kind": "X", "name": "x", "uid": controller, "controller": True}] if controller else []
    return {"metadata": {"uid": uid, "labels": labels or LABELS, "ownerReferences": refs}}


def slim(full: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {**slim_owner(full), "labels": full["metadata"]["labels"]}}


def test_a_labelled_pod_that_no_job_of_ours_controls_is_not_trusted() -> None:
    jobs = [obj("job-1", "tj-uid"), obj("job-foreign", "someone-else")]
    pods = [
        obj("pod-rank0", "job-1"),
        obj("forged-no-owner", None),  # someone's pod with our labels
        obj("forged-other-job", "job-foreign"),  # a Job with our labels that we did not make
    ]
    for convert in (lambda o: o, slim):
        mine_jobs, mine_pods = trusted_training("tj-uid", map(convert, jobs), map(convert, pods))
        assert [j["metadata"]["uid"] for j in mine_jobs] == ["job-1"]
        assert [p["metadata"]["uid"] for p in mine_pods] == ["pod-rank0"]


def test_server_pods_are_trusted_through_their_replica_set_and_deployment() -> None:
    deployments = [obj("dep", "ms-uid"), obj("dep-foreign", None)]
    replicasets = [obj("rs", "dep"), obj("rs-foreign", "dep-foreign")]
    pods = [obj("p1", "rs"), obj("p2", "rs-foreign"), obj("p3", None)]
    trusted = trusted_serving("ms-uid", deployments, replicasets, pods)
    assert [p["metadata"]["uid"] for p in trusted] == ["p1"]
    assert trusted_serving("ms-uid", deployments, [], pods) == []


def test_controller_uid_ignores_non_controller_references() -> None:
    o = {"metadata": {"ownerReferences": [{"uid": "a"}, {"uid": "b", "controller": True}]}}
    assert controller_uid(o) == "b"
    assert controller_uid({"metadata": {}}) is None
