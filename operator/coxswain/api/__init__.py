"""The Coxswain API (group `coxswain.dev`, version `v1alpha1`) as pydantic models.

These models are the single source of truth: the CRDs in `crds/` are generated from them
(`coxswain generate crds`), the operator parses every object through them and the trainer
reads its configuration with them. docs/api.md is the field map.
"""

from __future__ import annotations

from coxswain.api.modelservice import ModelService, ModelServiceSpec, ModelServiceStatus
from coxswain.api.trainingjob import TrainingJob, TrainingJobSpec, TrainingJobStatus

GROUP = "coxswain.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "coxswain"

TRAININGJOB_KIND = "TrainingJob"
TRAININGJOB_PLURAL = "trainingjobs"
TRAININGJOB_SINGULAR = "trainingjob"
TRAININGJOB_SHORT_NAMES = ("tj",)

MODELSERVICE_KIND = "ModelService"
MODELSERVICE_PLURAL = "modelservices"
MODELSERVICE_SINGULAR = "modelservice"
MODELSERVICE_SHORT_NAMES = ("ms",)

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "MODELSERVICE_KIND",
    "MODELSERVICE_PLURAL",
    "MODELSERVICE_SHORT_NAMES",
    "MODELSERVICE_SINGULAR",
    "TRAININGJOB_KIND",
    "TRAININGJOB_PLURAL",
    "TRAININGJOB_SHORT_NAMES",
    "TRAININGJOB_SINGULAR",
    "VERSION",
    "ModelService",
    "ModelServiceSpec",
    "ModelServiceStatus",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
]
