"""Which model files a ModelService serves: from `model.uri`, or from a TrainingJob's export.

Pure: the TrainingJob (as the index holds it) in, a `ServedModel` or the reason it is not
ready out. With `model.trainingJobRef` the job's export decides the model name, the
repository volume (unless `spec.repository` names one) and the key of an encrypted export,
and the exported version is served as the stable version: a ModelService that names a
TrainingJob serves what that job produced, once it succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from coxswain.api.common import RepositoryVolume, SecretKeyRef
from coxswain.api.modelservice import ModelService
from coxswain.modelservice import naming


@dataclass(frozen=True)
class ServedModel:
    """What the server pods load: model name, repository path and volume, versions."""

    name: str
    repository_path: str
    repository: RepositoryVolume | None
    encryption_key: SecretKeyRef | None
    stable: str
    canary: str | None


@dataclass(frozen=True)
class NotServable:
    """Why there is nothing to serve yet; `waiting` is True while it may still come."""

    reason: str
    message: str
    waiting: bool


def model_from_uri(uri: str) -> tuple[str, str]:
    """`pvc://<claim>[/<dirs>]/<model>` -> (model name, repository path inside the pod).

    The first part after the scheme names where the repository lives (a claim, a host
    path), which `spec.repository` mounts at /models; directories between it and the model
    are directories inside that volume.
    """
    parts = urlsplit(uri)
    segments = [s for s in (parts.netloc + parts.path).split("/") if s]
    name = segments[-1] if segments else ""
    inner = segments[1:-1] if len(segments) > 2 else []
    if parts.scheme == "file":
        inner = []  # a host path is mounted whole: the model sits at its top
    return name, "/".join([naming.MODEL_REPOSITORY_MOUNT, *inner])


def resolve(ms: ModelService, trainingjob: dict[str, Any] | None) -> ServedModel | NotServable:
    spec = ms.spec
    if spec.model.uri is not None:
        name, path = model_from_uri(spec.model.uri)
        return ServedModel(
            name=name,
            repository_path=path,
            repository=spec.repository,
            encryption_key=spec.encryption_key_secret_ref,
            stable=spec.versions.stable,
            canary=spec.versions.canary,
        )
    ref = spec.model.training_job_ref
    assert ref is not None, "the API schema requires exactly one of uri and trainingJobRef"
    if trainingjob is None:
        return NotServable(
            "TrainingJobNotReady",
            f"TrainingJob {ref.name} does not exist in this namespace; create it or fix spec.model.trainingJobRef",
            waiting=True,
        )
    status = trainingjob.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        return NotServable(
            "TrainingJobNotReady",
            f"TrainingJob {ref.name} failed, so it exported no model; fix and rerun it, or serve a model.uri",
            waiting=False,
        )
    exported = status.get("exportedModel")
    if phase != "Succeeded" or not exported:
        progress = (status.get("progress") or {}).get("percent")
        done = f", {progress:.0f}% done" if isinstance(progress, int | float) else ""
        return NotServable(
            "TrainingJobNotReady",
            f"waiting for TrainingJob {ref.name} to succeed and export its model (phase {phase}{done})",
            waiting=True,
        )
    export = (trainingjob.get("spec") or {}).get("export") or {}
    repository = spec.repository
    key = spec.encryption_key_secret_ref
    try:
        if repository is None and export.get("repository"):
            repository = RepositoryVolume.model_validate(export["repository"])
        if key is None and (export.get("encryption") or {}).get("keySecretRef"):
            key = SecretKeyRef.model_validate(export["encryption"]["keySecretRef"])
    except ValidationError:
        pass  # the TrainingJob's own schema makes this unreachable; serve without rather than fail
    stable = str(exported["version"])
    canary = spec.versions.canary if spec.versions.canary != stable else None
    return ServedModel(
        name=str(exported.get("modelName") or ref.name),
        repository_path=naming.MODEL_REPOSITORY_MOUNT,
        repository=repository,
        encryption_key=key,
        stable=stable,
        canary=canary,
    )
