"""Schema of `manifest.json`, the contract between the trainer's export and the server.

A model version is the directory `<repository>/<model>/<version>/`. Its manifest lists every
other file with its sha256 and size *as stored* (after encryption, when encrypted), so a
server can refuse a tampered or incomplete version before it reads a single weight.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ModelFormat(StrEnum):
    """How the serving file was written."""

    TORCHSCRIPT = "torchscript"  # torch.jit.save: self-contained, needs no model class
    EXPORTED_PROGRAM = "exported_program"  # torch.export.save (.pt2)
    STATE_DICT = "state_dict"  # weights only; the architecture must be built from `architecture`


class TaskKind(StrEnum):
    REGRESSION = "regression"
    CLASSIFICATION = "classification"


class TensorSpec(_Model):
    """One input or output tensor. `shape` includes the batch dimension as -1."""

    name: str = Field(min_length=1, max_length=64)
    dtype: Literal["float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool"]
    shape: list[int] = Field(min_length=1, max_length=8)

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, shape: list[int]) -> list[int]:
        if shape[0] != -1:
            raise ValueError("shape[0] must be -1 (the batch dimension)")
        if any(d < 1 for d in shape[1:]):
            raise ValueError("dimensions after the batch dimension must be >= 1")
        return shape

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])


class FileEntry(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Encryption(_Model):
    """AES-256-GCM per file: stored bytes are `nonce (12 bytes) || ciphertext || tag`.

    The associated data (authenticated, not stored) depends on `format`:
    - 2 (written since issue 15): the model name, the version and the file's relative path,
      so a stored file cannot be moved to another model, version or path that shares the key;
    - 1 (the first format; manifests without `format`): the file's relative path only. Still
      read, with a warning naming the version: files could be swapped between versions.
    """

    algorithm: Literal["AES-256-GCM"] = "AES-256-GCM"
    format: Literal[1, 2] = Field(
        default=1,
        description="how the associated data is built (see above); absent means 1, the first format",
    )
    key_id: str = Field(
        alias="keyId",
        description="sha256 of the key, first 16 hex chars: tells a wrong key from a tampered file",
    )


class Architecture(_Model):
    """What was trained: a built-in model and its hyper-parameters, or the user's module."""

    kind: Literal["linear", "mlp", "cnn", "custom"]
    config: dict[str, Any] = Field(default_factory=dict)


class SourceJob(_Model):
    namespace: str | None = None
    name: str | None = None
    attempt: int | None = None
    uid: str | None = None


class ModelManifest(_Model):
    schema_version: Literal[1] = Field(default=1, alias="schemaVersion")
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    created: datetime
    format: ModelFormat
    model_file: str = Field(
        alias="modelFile", description="the file the server loads, relative to the version dir"
    )
    task: TaskKind
    architecture: Architecture
    inputs: list[TensorSpec] = Field(min_length=1, max_length=16)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=16)
    labels: list[str] | None = Field(default=None, description="class names for classification outputs")
    metrics: dict[str, float] = Field(default_factory=dict, description="eval metrics at export time")
    framework: dict[str, str] = Field(default_factory=dict, description="e.g. {'torch': '2.5.0'}")
    source: SourceJob = Field(default_factory=SourceJob)
    encryption: Encryption | None = None
    files: dict[str, FileEntry]
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _safe_paths(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for rel in files:
            if rel.startswith("/") or ".." in re.split(r"[\\/]", rel) or rel == MANIFEST_FILE:
                raise ValueError(
                    f"file path {rel!r} must be relative, inside the version dir, and not the manifest"
                )
        return files

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2, exclude_none=True)
