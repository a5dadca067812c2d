"""Who controls an object: the ownerReference chain, never labels alone.

Labels are anyone's to set: a pod someone else created with our labels must not become
"rank 0" (its /progress feeding status, its termination message driving the handoff) or a
"server" whose /metrics drive scaling and canary verdicts. And a same-named object someone
else made before us (a Service `payments` for ModelService `payments`) must never be taken
over. So the operator trusts

- a child it made when the child's controller ownerReference carries its owner's UID;
- a training pod when its controller is a Job the TrainingJob controls;
- a server pod when its controller is a ReplicaSet whose controller is a Deployment the
  ModelService controls;

and creates children with `create`, applying over an existing one only when that one is
already its own (`apply_owned`). Otherwise it raises `NameConflict`, which the controller
turns into the owner's `NameConflict` condition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict

from coxswain.kube import FIELD_MANAGER, is_conflict


class NameConflict(Exception):
    """A child's name is taken by an object its owner does not control."""

    def __init__(self, kind: str, name: str, holder: str) -> None:
        self.kind, self.name, self.holder = kind, name, holder
        super().__init__(
            f"{kind} {name} already exists and is not this object's ({holder}); the operator does not "
            f"take it over: delete or rename that {kind}, or rename this object"
        )


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The UID in the object's controller ownerReference, if it has one."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid") or "") or None
    return None


def _holder(obj: Mapping[str, Any]) -> str:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return f"controlled by {ref.get('kind')} {ref.get('name')}"
    return "not controlled by any object"


def slim_owner(body: Mapping[str, Any]) -> dict[str, Any]:
    """What indexes keep for the ownership checks: the object's UID and its controller's."""
    meta = body.get("metadata") or {}
    return {"uid": meta.get("uid"), "controllerUid": controller_uid(body)}


def _uid(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata") or {}
    return meta.get("uid")


def _controller(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata") or {}
    # Slimmed index entries carry it precomputed; full objects carry ownerReferences.
    return meta.get("controllerUid") if "controllerUid" in meta else controller_uid(obj)


def controlled(objs: Iterable[dict[str, Any]], owner_uids: Iterable[str | None]) -> list[dict[str, Any]]:
    """The objects whose controller is one of `owner_uids`."""
    owners = {u for u in owner_uids if u}
    return [o for o in objs if _controller(o) in owners]


def trusted_training(
    owner_uid: str | None, jobs: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Jobs the TrainingJob controls, and the pods those Jobs control."""
    mine = controlled(jobs, [owner_uid])
    return mine, controlled(pods, [_uid(j) for j in mine])


def trusted_serving(
    owner_uid: str | None,
    deployments: Iterable[dict[str, Any]],
    replicasets: Iterable[dict[str, Any]],
    pods: Iterable[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The server pods whose chain runs pod -> ReplicaSet -> Deployment -> the ModelService."""
    mine = controlled(deployments, [owner_uid])
    sets = controlled(replicasets, [_uid(d) for d in mine])
    return controlled(pods, [_uid(r) for r in sets])


async def apply_owned(
    client: AsyncClient, obj: dict[str, Any], *, update: bool = True
) -> dict[str, Any] | None:
    """Create `obj`, or (with `update`) apply over it when the existing one is already ours.

    Ours means: its controller ownerReference has the UID `obj` names as its controller.
    Returns the object as created, or None when it existed already. Raises NameConflict when
    the name is taken.
    """
    resource = from_dict(obj)
    try:
        created: Any = await client.create(resource)
        return dict(created.to_dict() if hasattr(created, "to_dict") else created)
    except ApiError as exc:
        if not is_conflict(exc):
            raise
    meta = obj["metadata"]
    kind: Any = type(resource)
    existing = await client.get(kind, meta["name"], namespace=meta.get("namespace"))
    current: dict[str, Any] = existing.to_dict() if hasattr(existing, "to_dict") else dict(existing)
    if controller_uid(current) != controller_uid(obj):
        raise NameConflict(obj["kind"], meta["name"], _holder(current))
    if update:
        # Server-side apply: our fields, our manager; fields of others stay.
        await client.apply(resource, field_manager=FIELD_MANAGER, force=True)
    return None
