"""What the images are built from, and one hash of it: an unchanged tree rebuilds nothing.

The hash covers the files the Dockerfiles can COPY (the repository minus what .dockerignore
leaves out, so editing the dev cluster does not rebuild images) plus the build recipes.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable
from pathlib import Path

# Paths (relative to the repository root) a Dockerfile reads; everything else cannot change an image.
BUILD_INPUTS = (
    ".dockerignore",
    "pyproject.toml",
    "operator",
    "trainer_image",
    "server_image",
    "examples/custom_task",
)


def read_ignore_patterns(root: Path) -> list[str]:
    """The patterns of .dockerignore (no `!` exceptions: this project's file has none)."""
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line.strip("/"))
    return patterns


def is_ignored(relative: str, patterns: Iterable[str]) -> bool:
    """Whether .dockerignore keeps `relative` (a posix path) out of the build context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            # `**/x` matches x at any depth.
            if bare != pattern and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], bare):
                return True
    return False


def context_files(root: Path) -> list[Path]:
    """The files of the build context the Dockerfiles can read, sorted."""
    patterns = read_ignore_patterns(root)
    found: list[Path] = []
    for top in BUILD_INPUTS:
        start = root / top
        candidates = [start] if start.is_file() else sorted(p for p in start.rglob("*") if p.is_file())
        for path in candidates:
            if not is_ignored(path.relative_to(root).as_posix(), patterns):
                found.append(path)
    return sorted(found)


def inputs_hash(root: Path, extra: Iterable[str] = ()) -> str:
    """sha256 over the build context's file names, modes and contents, and `extra` strings."""
    digest = hashlib.sha256()
    for path in context_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o111).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for item in extra:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()
