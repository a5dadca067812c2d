"""The API server itself judges our manifests: every example is accepted by a server-side
dry run, and every generated invalid manifest is refused with a message naming the field.

Requests use `fieldValidation=Strict`, as kubectl does by default: an unknown field is an
error, not something pruned with a warning.
"""

from __future__ import annotations

from typing import Any, Protocol

import pytest
import yaml
from lightkube import ApiError, Client
from lightkube.codecs import from_dict
from lightkube.core.resource import GlobalResource
from lightkube.generic_resource import load_in_cluster_generic_resources

from cluster_fixtures import REPO, ClusterHandle

pytestmark = pytest.mark.cluster

EXAMPLES = REPO / "examples"
MIN_INVALID_CASES = 200


class InvalidCase(Protocol):
    """The interface of tests/invalid_manifests.py (written with the API types)."""

    id: str
    manifest: dict[str, Any]
    field: str


def example_documents(kueue: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """Every example document; `kueue`: only Kueue's (they need Kueue's CRDs), else the rest."""
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if not (isinstance(doc, dict) and "kind" in doc):
                continue
            if str(doc.get("apiVersion", "")).startswith("kueue.x-k8s.io/") == kueue:
                docs.append((f"{path.relative_to(EXAMPLES)}#{i}", doc))
    return docs


def load_invalid_cases() -> tuple[list[InvalidCase], str | None]:
    try:
        from invalid_manifests import invalid_manifests
    except ModuleNotFoundError as e:
        if e.name != "invalid_manifests":
            raise
        return [], "tests/invalid_manifests.py is not there yet (it comes with the API types)"
    cases: list[InvalidCase] = list(invalid_manifests())
    return cases, None


INVALID_CASES, INVALID_MISSING = load_invalid_cases()


@pytest.fixture(scope="module")
def client(cluster: ClusterHandle) -> Client:
    # Makes the CRD kinds (TrainingJob, ModelService) known to lightkube's decoder.
    load_in_cluster_generic_resources(cluster.client)
    return cluster.client


def dry_run_create(client: Client, manifest: dict[str, Any]) -> None:
    """POST `manifest` with dryRun=All and strict field validation; raises ApiError if refused."""
    obj = from_dict(manifest)
    namespace = manifest.get("metadata", {}).get("namespace", "default")
    # Client.create has no fieldValidation parameter; the generic request it wraps does.
    client._client.request(
        "post",
        res=type(obj),
        obj=obj,
        namespace=None if isinstance(obj, GlobalResource) else namespace,
        params={"dryRun": "All", "fieldValidation": "Strict", "fieldManager": "coxswain-tests"},
    )


def test_there_are_examples() -> None:
    kinds = {doc["kind"] for _, doc in example_documents()}
    assert {"TrainingJob", "ModelService"} <= kinds, f"examples/ has only {sorted(kinds)}"


@pytest.mark.parametrize(("where", "manifest"), example_documents(), ids=[w for w, _ in example_documents()])
def test_example_is_accepted_by_server_side_dry_run(
    client: Client, where: str, manifest: dict[str, Any]
) -> None:
    try:
        dry_run_create(client, manifest)
    except ApiError as e:
        pytest.fail(f"{where} was refused: {e.status.message}")


@pytest.mark.parametrize(
    ("where", "manifest"), example_documents(kueue=True), ids=[w for w, _ in example_documents(kueue=True)]
)
def test_kueue_example_is_accepted_by_a_real_kueue(
    kueue: ClusterHandle, where: str, manifest: dict[str, Any]
) -> None:
    load_in_cluster_generic_resources(kueue.client)
    try:
        dry_run_create(kueue.client, manifest)
    except ApiError as e:
        pytest.fail(f"{where} was refused by Kueue's CRDs or webhooks: {e.status.message}")


def test_at_least_200_invalid_manifests() -> None:
    if INVALID_MISSING:
        pytest.skip(INVALID_MISSING)
    assert len(INVALID_CASES) >= MIN_INVALID_CASES
    assert len({c.id for c in INVALID_CASES}) == len(INVALID_CASES), "case ids must be unique"


@pytest.mark.parametrize(
    "case",
    INVALID_CASES or [pytest.param(None, marks=pytest.mark.skip(reason=INVALID_MISSING or "no cases"))],
    ids=[c.id for c in INVALID_CASES] or ["missing"],
)
def test_invalid_manifest_is_refused_naming_the_field(client: Client, case: InvalidCase) -> None:
    with pytest.raises(ApiError) as refused:
        dry_run_create(client, case.manifest)
    status = refused.value.status
    assert status.code in (400, 422), f"{case.id}: refused for another reason: {status.code} {status.message}"
    assert case.field in (status.message or ""), (
        f"{case.id}: the message does not name {case.field!r}: {status.message}"
    )
