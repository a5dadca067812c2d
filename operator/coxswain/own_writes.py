"""Our own last write of each object, so a pass never acts on an older body from the watch.

A reconcile pass can run (woken by a child's event) before the watch delivers the status we
just wrote; acting on the older body would, say, restart a gang twice. Each controller keeps
one `OwnWrites` and reads bodies through `freshest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (namespace, name)


def _resource_version(obj: dict[str, Any]) -> int:
    # Opaque by contract, an etcd revision in practice; unknown shapes compare as oldest.
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata", {})
    return (meta.get("namespace", ""), meta.get("name", ""))


@dataclass
class OwnWrites:
    _latest: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def remember(self, obj: dict[str, Any]) -> None:
        """Record the object as the API server returned it after our write."""
        self._latest[_key(obj)] = obj

    def freshest(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body`, or our own later write of it while the watch has not caught up."""
        key = _key(body)
        mine = self._latest.get(key)
        if mine is None or _resource_version(body) >= _resource_version(mine):
            self._latest.pop(key, None)
            return body
        return mine

    def forget(self, key: Key) -> None:
        self._latest.pop(key, None)
