"""Train -> serve: roll a finished TrainingJob's exported version into its ModelService."""

from __future__ import annotations

import logging
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType

from coxswain import events
from coxswain.api.conditions import TrainingJobReason as R
from coxswain.api.trainingjob import Rollout, TrainingJob
from coxswain.kube import MODELSERVICE_RESOURCE, is_not_found


def handoff_patch(
    tj: TrainingJob, current_versions: dict[str, Any], canary_status: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ModelService spec patch for the new version, or None when it is already there.

    A canary the analysis already promoted serves all traffic: it becomes the stable
    version before the new one comes in as canary, so the rollback target is the right one.
    """
    serving, exported = tj.spec.serving, tj.status.exported_model if tj.status else None
    if serving is None or exported is None:
        return None
    version = exported.version
    if serving.rollout == Rollout.STABLE:
        if current_versions.get("stable") == version and not current_versions.get("canary"):
            return None
        return {"spec": {"versions": {"stable": version, "canary": None, "canaryPercent": None}}}
    if current_versions.get("canary") == version or current_versions.get("stable") == version:
        return None
    percent = serving.effective_canary_percent
    versions: dict[str, Any] = {"canary": version, "canaryPercent": percent}
    promoted = (canary_status or {}).get("phase") == "Promoted"
    if (
        promoted
        and current_versions.get("canary")
        and (canary_status or {}).get("version") == current_versions["canary"]
    ):
        versions["stable"] = current_versions["canary"]
    return {"spec": {"versions": versions}}


async def hand_off(
    client: AsyncClient, tj: TrainingJob, log: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    serving = tj.spec.serving
    if serving is None:
        return
    ns = tj.metadata.namespace
    try:
        ms = await client.get(MODELSERVICE_RESOURCE, serving.model_service, namespace=ns)
    except ApiError as exc:
        if not is_not_found(exc):
            raise
        message = f"spec.serving.modelService {serving.model_service} does not exist in namespace {ns}; create it to serve the model"
        events.post(tj.to_dict(), "Warning", R.HANDOFF_SKIPPED, message)
        log.warning(message)
        return
    ref = ((ms.get("spec") or {}).get("model") or {}).get("trainingJobRef") or {}
    if ref.get("name") != tj.metadata.name:
        # A TrainingJob must not rewrite the versions of a ModelService that did not opt in.
        message = (
            f"spec.serving.modelService: ModelService {serving.model_service} does not serve this "
            f"TrainingJob (its spec.model.trainingJobRef.name is {ref.get('name') or 'unset'}); set it to "
            f"{tj.metadata.name} to let this job roll versions into it"
        )
        events.post(tj.to_dict(), "Warning", "HandoffRefused", message)
        log.warning(message)
        return
    versions = dict(ms.get("spec", {}).get("versions", {}) or {})
    patch = handoff_patch(tj, versions, (ms.get("status") or {}).get("canary"))
    if patch is None:
        return
    await client.patch(
        MODELSERVICE_RESOURCE, serving.model_service, patch, namespace=ns, patch_type=PatchType.MERGE
    )
    exported = tj.status.exported_model if tj.status else None
    message = f"rolled version {exported.version if exported else '?'} into ModelService {serving.model_service} as {serving.rollout.value}"
    events.post(tj.to_dict(), "Normal", R.HANDED_OFF, message)
    log.info(message)
