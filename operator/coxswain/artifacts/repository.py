"""Read and write model versions in a repository directory `<root>/<model>/<version>/`.

Writers stage a version in a hidden temporary directory and rename it into place, so a
reader never sees half a version and an existing version is never overwritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from coxswain.artifacts import crypto
from coxswain.artifacts.manifest import MANIFEST_FILE, Encryption, FileEntry, ModelManifest

log = logging.getLogger("coxswain.artifacts")


class ModelRepositoryError(Exception):
    """A model version is missing, incomplete, tampered with or cannot be decrypted."""


class VersionExistsError(ModelRepositoryError):
    pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_dir(root: str | os.PathLike[str], model: str, version: str) -> Path:
    return Path(root) / model / version


def list_versions(root: str | os.PathLike[str], model: str) -> list[str]:
    """Complete versions (with a manifest), oldest first by the number in `v<N>`, then by name."""
    base = Path(root) / model
    if not base.is_dir():
        return []
    found = [
        p.name
        for p in base.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
    ]
    return sorted(found, key=_version_sort_key)


def _version_sort_key(name: str) -> tuple[int, int, str]:
    m = re.fullmatch(r"v(\d+)", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def next_version(root: str | os.PathLike[str], model: str) -> str:
    base = Path(root) / model
    numbers = [
        int(m.group(1))
        for p in (base.iterdir() if base.is_dir() else [])
        if (m := re.fullmatch(r"v(\d+)", p.name))
    ]
    return f"v{max(numbers, default=0) + 1}"


def write_version(
    root: str | os.PathLike[str],
    manifest: ModelManifest,
    files: Mapping[str, bytes],
    key: bytes | None = None,
) -> Path:
    """Write `files` and a manifest (with their checksums) as a new version; returns its dir.

    `manifest.files` and `manifest.encryption` are filled in here; encrypted files are
    written in the current format (bound to model, version and path). Raises
    VersionExistsError if the version is already there.
    """
    target = version_dir(root, manifest.name, manifest.version)
    if target.exists():
        raise VersionExistsError(
            f"model {manifest.name} version {manifest.version} already exists at {target}; versions are never overwritten"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=target.parent))
    try:
        entries: dict[str, FileEntry] = {}
        for rel, data in files.items():
            stored = (
                crypto.encrypt(key, data, crypto.file_associated_data(manifest.name, manifest.version, rel))
                if key
                else data
            )
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(stored)
            entries[rel] = FileEntry(sha256=sha256_bytes(stored), size=len(stored))
        encryption = Encryption(key_id=crypto.key_id(key), format=crypto.CURRENT_FORMAT) if key else None
        final = manifest.model_copy(update={"files": entries, "encryption": encryption})
        ModelManifest.model_validate(final.model_dump(by_alias=True))  # re-check paths after the update
        (staging / MANIFEST_FILE).write_text(final.to_json())
        for path in staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        try:
            os.rename(staging, target)  # atomic; fails if another writer won the race
        except OSError as exc:
            raise VersionExistsError(
                f"model {manifest.name} version {manifest.version} appeared while writing; not overwritten"
            ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_manifest(path: str | os.PathLike[str]) -> ModelManifest:
    """The manifest of the version directory `path`."""
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        raise ModelRepositoryError(
            f"{path}: no {MANIFEST_FILE}; is this a model version directory (<repository>/<model>/<version>/)?"
        )
    try:
        return ModelManifest.model_validate_json(file.read_bytes())
    except ValueError as exc:
        raise ModelRepositoryError(f"{file}: not a valid manifest: {exc}") from exc


def read_verified_files(
    path: str | os.PathLike[str], key: bytes | None = None
) -> tuple[ModelManifest, dict[str, bytes]]:
    """Every file of a version, checked against the manifest's sha256 and decrypted if needed.

    With a key, the version must be encrypted: a server given a key serves encrypted versions
    only, so a plaintext version dropped into the repository is refused, not served.
    """
    manifest = read_manifest(path)
    if key is not None and manifest.encryption is None:
        raise ModelRepositoryError(
            f"{manifest.name} {manifest.version} is not encrypted, but an encryption key was given: with a key "
            "only encrypted versions are served; export it with spec.export.encryption, or serve without the key"
        )
    if manifest.encryption and key is None:
        raise ModelRepositoryError(
            f"{manifest.name} {manifest.version} is encrypted ({manifest.encryption.algorithm}); give the key "
            "(--key-file, COXSWAIN_ENCRYPTION_KEY, or the ModelService's encryptionKeySecretRef)"
        )
    if manifest.encryption and key is not None and crypto.key_id(key) != manifest.encryption.key_id:
        raise ModelRepositoryError(
            f"{manifest.name} {manifest.version}: the given key is not the one it was encrypted with (key id {crypto.key_id(key)} != {manifest.encryption.key_id})"
        )
    if manifest.encryption and manifest.encryption.format == crypto.FORMAT_PATH_ONLY:
        log.warning(
            "model %s %s uses encryption format 1: its files are bound to their paths only, so a file "
            "could be swapped with the same file of another version encrypted with this key; export it again "
            "to write format 2",
            manifest.name,
            manifest.version,
        )
    out: dict[str, bytes] = {}
    for rel, entry in manifest.files.items():
        file = Path(path) / rel
        if not file.is_file():
            raise ModelRepositoryError(
                f"{manifest.name} {manifest.version}: file {rel} listed in the manifest is missing (incomplete copy?)"
            )
        stored = file.read_bytes()
        if len(stored) != entry.size or sha256_bytes(stored) != entry.sha256:
            raise ModelRepositoryError(
                f"{manifest.name} {manifest.version}: {rel} does not match its sha256 in the manifest; refusing a tampered or corrupt model"
            )
        if manifest.encryption and key:
            associated = crypto.file_associated_data(
                manifest.name, manifest.version, rel, manifest.encryption.format
            )
            out[rel] = crypto.decrypt(key, stored, associated, f"{manifest.name} {manifest.version} {rel}")
        else:
            out[rel] = stored
    if manifest.model_file not in out:
        raise ModelRepositoryError(
            f"{manifest.name} {manifest.version}: modelFile {manifest.model_file} is not among the manifest's files"
        )
    return manifest, out
