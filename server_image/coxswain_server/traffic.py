"""Traffic weights between loaded versions, and the watched file the operator writes them to.

A split is immutable; changing the weights swaps in a new split with one attribute
assignment, so a request picks from either the old or the new split, never a half-updated
one, and requests already queued on a version finish there.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from coxswain_server.settings import check_weights

log = logging.getLogger("coxswain_server.traffic")


class TrafficSplit:
    """Weighted choice among versions; weight 0 keeps a version loaded but out of rotation."""

    __slots__ = ("_cumulative", "_only", "_total", "_versions", "weights")

    def __init__(self, weights: Mapping[str, int]) -> None:
        self.weights: dict[str, int] = dict(weights)
        live = [(v, w) for v, w in self.weights.items() if w > 0]
        self._versions = [v for v, _ in live]
        self._cumulative: list[int] = []
        total = 0
        for _, w in live:
            total += w
            self._cumulative.append(total)
        self._total = total
        self._only = self._versions[0] if len(live) == 1 else None

    def pick(self) -> str | None:
        """The version for an unversioned call, or None when no version has a weight."""
        if self._only is not None:
            return self._only
        if not self._total:
            return None
        return self._versions[bisect.bisect_right(self._cumulative, random.random() * self._total)]

    def percent(self, version: str) -> float:
        total = sum(self.weights.values())
        return 100.0 * self.weights.get(version, 0) / total if total else 0.0


def parse_traffic_document(document: Any, source: str) -> dict[str, int]:
    """`{"weights": {"v1": 90, "v2": 10}}` or the bare mapping `{"v1": 90, "v2": 10}`."""
    if isinstance(document, dict) and "weights" in document:
        document = document["weights"]
    if not isinstance(document, dict) or not document:
        raise ValueError(f'{source}: expected {{"weights": {{"v1": 90, "v2": 10}}}}, got {document!r}')
    weights = check_weights({str(k): v for k, v in document.items()})
    return weights


def read_traffic_file(path: Path) -> dict[str, int]:
    try:
        document = yaml.safe_load(path.read_text())  # YAML is a superset of JSON: both work
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read traffic weights: {exc}") from exc
    return parse_traffic_document(document, str(path))


@dataclass(frozen=True)
class _Stamp:
    inode: int
    mtime_ns: int
    size: int


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap volume's file is a link into ..data/
    except OSError:
        return None
    return _Stamp(st.st_ino, st.st_mtime_ns, st.st_size)


async def watch_traffic_file(
    path: Path, interval: float, apply: Callable[[dict[str, int]], Awaitable[None]]
) -> None:
    """Call `apply` with the file's weights whenever it changes, until cancelled.

    Polling stat() once a `interval` is deliberate: the kubelet updates a ConfigMap volume by
    writing a new timestamped directory and swapping the `..data` symlink, so an inotify
    watch on the file itself never fires, and a watch on the directory needs re-arming after
    each swap. stat() through the symlink sees the new file's inode at once, costs a few
    microseconds, and works the same on any filesystem. Kubernetes itself takes up to a
    minute to propagate a ConfigMap change, so one second adds nothing users can notice.
    """
    seen = _stamp(path)
    while True:
        await asyncio.sleep(interval)
        stamp = _stamp(path)
        if stamp is None or stamp == seen:
            if stamp is None and seen is not None:
                log.warning("traffic file %s disappeared; keeping the current weights", path)
                seen = None
            continue
        seen = stamp
        try:
            weights = read_traffic_file(path)
        except ValueError as exc:
            log.error("%s; keeping the current weights until the file is fixed", exc)
            continue
        try:
            await apply(weights)
        except Exception as exc:
            log.error(
                "traffic file %s: could not apply %s: %s; keeping the current weights", path, weights, exc
            )
