"""The model repository's encryption (shared by the trainer's export and the server): a key
means encrypted versions only, and the associated data binds each file to its model,
version and path, so stored files cannot be moved between them. Versions written in the
first format still load, with a warning naming them."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coxswain.artifacts import crypto
from coxswain.artifacts.manifest import (
    Architecture,
    Encryption,
    FileEntry,
    ModelFormat,
    ModelManifest,
    TaskKind,
    TensorSpec,
)
from coxswain.artifacts.repository import ModelRepositoryError, read_verified_files, write_version

pytestmark = pytest.mark.unit

KEY = bytes(range(32))


def manifest(name: str, version: str, **extra: object) -> ModelManifest:
    return ModelManifest(
        name=name,
        version=version,
        created=datetime(2026, 1, 1, tzinfo=UTC),
        format=ModelFormat.TORCHSCRIPT,
        model_file="model.pt",
        task=TaskKind.REGRESSION,
        architecture=Architecture(kind="linear"),
        inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, 2])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=[-1, 1])],
        files={},
        **extra,  # type: ignore[arg-type]
    )


def write(root: Path, name: str, version: str, data: bytes, key: bytes | None = KEY) -> Path:
    return write_version(
        root, manifest(name, version), {"model.pt": data, "sub/extra.bin": b"x" + data}, key=key
    )


def swap(source: Path, target: Path, rel: str) -> None:
    """What someone with write access to the storage, but not the key, can do."""
    data = (source / rel).read_bytes()
    (target / rel).write_bytes(data)
    doc = json.loads((target / "manifest.json").read_text())
    doc["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (target / "manifest.json").write_text(json.dumps(doc))


def test_with_a_key_an_unencrypted_version_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "m", "v1", b"weights", key=None)
    with pytest.raises(ModelRepositoryError, match=r"m v1 is not encrypted.*key"):
        read_verified_files(path, KEY)
    _, files = read_verified_files(path)  # without a key, plaintext versions are what one gets
    assert files["model.pt"] == b"weights"


def test_new_versions_are_written_in_the_second_format(tmp_path: Path) -> None:
    path = write(tmp_path, "m", "v1", b"weights")
    doc = json.loads((path / "manifest.json").read_text())
    assert doc["encryption"]["format"] == 2
    read, files = read_verified_files(path, KEY)
    assert files == {"model.pt": b"weights", "sub/extra.bin": b"xweights"}
    assert read.encryption is not None and read.encryption.format == 2


@pytest.mark.parametrize(
    ("source", "target"),
    [(("m", "v2"), ("m", "v1")), (("other", "v1"), ("m", "v1"))],
    ids=["between-versions", "between-models"],
)
def test_files_swapped_between_versions_or_models_fail_to_decrypt(
    tmp_path: Path, source: tuple[str, str], target: tuple[str, str]
) -> None:
    write(tmp_path, "m", "v1", b"version one")
    write(tmp_path, *source, b"the other one")
    swap(tmp_path.joinpath(*source), tmp_path.joinpath(*target), "model.pt")
    with pytest.raises(crypto.DecryptionError, match="decryption failed"):
        read_verified_files(tmp_path.joinpath(*target), KEY)


def test_a_whole_version_copied_under_another_name_fails_to_decrypt(tmp_path: Path) -> None:
    write(tmp_path, "m", "v2", b"v2 weights")
    shutil.copytree(tmp_path / "m" / "v2", tmp_path / "m" / "v1")
    doc = json.loads((tmp_path / "m" / "v1" / "manifest.json").read_text())
    doc["version"] = "v1"  # the manifest is not secret: the copier can edit it too
    (tmp_path / "m" / "v1" / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(crypto.DecryptionError):
        read_verified_files(tmp_path / "m" / "v1", KEY)


def test_first_format_versions_still_load_with_a_warning_naming_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the first format, as written before: associated data is the path, no format in the manifest
    stored = crypto.encrypt(KEY, b"old weights", "model.pt")
    old = manifest(
        "m",
        "v3",
        encryption=Encryption(key_id=crypto.key_id(KEY)),
    ).model_copy(
        update={"files": {"model.pt": FileEntry(sha256=hashlib.sha256(stored).hexdigest(), size=len(stored))}}
    )
    doc = json.loads(old.to_json())
    doc["encryption"].pop("format", None)
    (tmp_path / "m" / "v3").mkdir(parents=True)
    (tmp_path / "m" / "v3" / "model.pt").write_bytes(stored)
    (tmp_path / "m" / "v3" / "manifest.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        _, files = read_verified_files(tmp_path / "m" / "v3", KEY)
    assert files["model.pt"] == b"old weights"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("m v3" in w and "encryption format 1" in w for w in warnings), warnings


def test_an_unknown_encryption_format_is_refused_by_the_manifest_schema(tmp_path: Path) -> None:
    path = write(tmp_path, "m", "v1", b"weights")
    doc = json.loads((path / "manifest.json").read_text())
    doc["encryption"]["format"] = 3
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ModelRepositoryError, match="format"):
        read_verified_files(path, KEY)
