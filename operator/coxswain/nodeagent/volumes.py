"""Pod volumes as local directories, and each container's bind mounts.

emptyDir: a directory in the pod's directory (medium Memory too: disk-backed here).
configMap, secret, downwardAPI, projected: files written once at pod start (not refreshed).
hostPath: the path itself (`DirectoryOrCreate`/`FileOrCreate` create it).
persistentVolumeClaim: the bound PV's hostPath/local path if it has one, else one
directory per claim under the agent's data dir (`claims/<namespace>/<claim>`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coxswain.nodeagent.env import expand, field_value
from coxswain.nodeagent.process import Mount

BytesLookup = Callable[[str, str], Awaitable[dict[str, bytes] | None]]
ClaimLookup = Callable[[str, str], Awaitable[Path]]
TokenLookup = Callable[[str, str, int, list[str]], Awaitable[str]]

# Volume sources kubelet mounts read-only whatever the volumeMount says.
_ALWAYS_READ_ONLY = ("configMap", "secret", "downwardAPI", "projected")
SUPPORTED = ("emptyDir", "hostPath", "persistentVolumeClaim", *_ALWAYS_READ_ONLY)


class VolumeError(Exception):
    """A volume cannot be made (missing object, unsupported kind); the message names it."""


@dataclass
class Sources:
    """How volumes reach the API: (namespace, name) lookups, bytes for file contents."""

    config_maps: BytesLookup
    secrets: BytesLookup
    claim_path: ClaimLookup
    token: TokenLookup


def unsupported_volumes(pod: Mapping[str, Any]) -> list[str]:
    out = []
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        kinds = [k for k in vol if k != "name" and vol[k] is not None]
        if not any(k in SUPPORTED for k in kinds):
            out.append(f"{vol['name']} ({', '.join(kinds) or 'no source'})")
    return out


def _host_path(source: Mapping[str, Any]) -> Path:
    path = Path(source["path"])
    kind = source.get("type") or ""
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate" and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    elif kind in ("Directory", "File") and not path.exists():
        raise VolumeError(f"hostPath {path} does not exist (type {kind})")
    return path


def _write_file(path: Path, content: bytes, mode: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.chmod(path, 0o644 if mode is None else mode)


def _write_keys(
    root: Path,
    data: Mapping[str, bytes],
    items: list[dict[str, Any]] | None,
    default_mode: int | None,
    what: str,
) -> None:
    if items:
        for item in items:
            if item["key"] not in data:
                raise VolumeError(f"{what} has no key {item['key']!r}")
            _write_file(root / item["path"], data[item["key"]], item.get("mode", default_mode))
    else:
        for key, value in data.items():
            _write_file(root / key, value, default_mode)


async def _keyed(
    root: Path, source: Mapping[str, Any], lookup: BytesLookup, ns: str, name_key: str, kind: str
) -> None:
    name = source.get(name_key, "")
    data = await lookup(ns, name)
    if data is None:
        if source.get("optional"):
            return
        raise VolumeError(f"{kind} {ns}/{name} not found")
    _write_keys(root, data, source.get("items"), source.get("defaultMode"), f"{kind} {ns}/{name}")


def _downward(
    root: Path, pod: Mapping[str, Any], items: list[dict[str, Any]], default_mode: int | None
) -> None:
    for item in items:
        if not item.get("fieldRef"):
            raise VolumeError(f"downwardAPI item {item['path']}: only fieldRef is supported")
        path = item["fieldRef"]["fieldPath"]
        meta = pod.get("metadata", {})
        if path in ("metadata.labels", "metadata.annotations"):
            pairs = sorted((meta.get(path.split(".")[1]) or {}).items())
            text = "\n".join(f'{k}="{v}"' for k, v in pairs)
        else:
            text = field_value(pod, path)
        _write_file(root / item["path"], text.encode(), item.get("mode", default_mode))


async def prepare_volumes(
    pod: Mapping[str, Any], pod_dir: Path, sources: Sources
) -> dict[str, tuple[Path, bool]]:
    """volume name -> (host path, always read-only). Raises VolumeError naming the volume."""
    ns: str = pod["metadata"]["namespace"]
    out: dict[str, tuple[Path, bool]] = {}
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        name: str = vol["name"]
        local = pod_dir / "volumes" / name
        try:
            if vol.get("emptyDir") is not None:
                local.mkdir(parents=True, exist_ok=True)
                out[name] = (local, False)
            elif vol.get("hostPath") is not None:
                out[name] = (_host_path(vol["hostPath"]), False)
            elif vol.get("persistentVolumeClaim") is not None:
                out[name] = (await sources.claim_path(ns, vol["persistentVolumeClaim"]["claimName"]), False)
            elif vol.get("configMap") is not None:
                local.mkdir(parents=True, exist_ok=True)
                await _keyed(local, vol["configMap"], sources.config_maps, ns, "name", "ConfigMap")
                out[name] = (local, True)
            elif vol.get("secret") is not None:
                local.mkdir(parents=True, exist_ok=True)
                await _keyed(local, vol["secret"], sources.secrets, ns, "secretName", "Secret")
                out[name] = (local, True)
            elif vol.get("downwardAPI") is not None:
                local.mkdir(parents=True, exist_ok=True)
                _downward(
                    local, pod, vol["downwardAPI"].get("items") or [], vol["downwardAPI"].get("defaultMode")
                )
                out[name] = (local, True)
            elif vol.get("projected") is not None:
                local.mkdir(parents=True, exist_ok=True)
                await _projected(local, pod, vol["projected"], sources)
                out[name] = (local, True)
            else:
                raise VolumeError("no volume source this node agent supports")
        except VolumeError as e:
            raise VolumeError(f"volume {name!r}: {e}") from None
    return out


async def _projected(root: Path, pod: Mapping[str, Any], spec: Mapping[str, Any], sources: Sources) -> None:
    ns: str = pod["metadata"]["namespace"]
    mode = spec.get("defaultMode")
    for src in spec.get("sources") or []:
        if src.get("configMap"):
            await _keyed(
                root, {"defaultMode": mode, **src["configMap"]}, sources.config_maps, ns, "name", "ConfigMap"
            )
        elif src.get("secret"):
            await _keyed(root, {"defaultMode": mode, **src["secret"]}, sources.secrets, ns, "name", "Secret")
        elif src.get("downwardAPI"):
            _downward(root, pod, src["downwardAPI"].get("items") or [], mode)
        elif src.get("serviceAccountToken"):
            tok = src["serviceAccountToken"]
            sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
            audiences = [tok["audience"]] if tok.get("audience") else []
            text = await sources.token(ns, sa, int(tok.get("expirationSeconds") or 3600), audiences)
            _write_file(root / tok["path"], text.encode(), mode)
        else:
            raise VolumeError(f"projected source {sorted(src)} is not supported")


def container_mounts(
    container: Mapping[str, Any], volumes: Mapping[str, tuple[Path, bool]], env: Mapping[str, str]
) -> list[Mount]:
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        if vm["name"] not in volumes:
            raise VolumeError(f"volumeMount {vm['mountPath']}: no volume named {vm['name']!r}")
        base, forced_ro = volumes[vm["name"]]
        sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
        source = base
        if sub:
            if sub.startswith("/") or ".." in Path(sub).parts:
                raise VolumeError(
                    f"volumeMount {vm['mountPath']}: subPath {sub!r} must be relative, without '..'"
                )
            source = base / sub
            if not source.exists():
                # The kubelet creates a missing subPath as a directory.
                source.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(source, vm["mountPath"], bool(vm.get("readOnly")) or forced_ro))
    return mounts


def decode_secret(data: Mapping[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}
