"""The server's configuration: one typed object, validated before anything is loaded.

Every field can come from the command line or from an environment variable named
`COXSWAIN_SERVER_<FIELD>` (so the operator configures pods through the Deployment's env);
the command line wins. List and mapping fields accept the command line's text forms in env
too: `COXSWAIN_SERVER_VERSIONS=v1,v2`, `COXSWAIN_SERVER_WEIGHTS=v1=90,v2=10`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coxswain.artifacts.manifest import NAME_PATTERN, VERSION_PATTERN

ENV_PREFIX = "COXSWAIN_SERVER_"


def parse_weights(text: str) -> dict[str, int]:
    """`v1=90,v2=10` -> {"v1": 90, "v2": 10}; raises ValueError naming the bad part."""
    weights: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"weight {part!r} must look like VERSION=PERCENT, e.g. v1=90")
        try:
            weights[name.strip()] = int(value)
        except ValueError:
            raise ValueError(f"weight {part!r}: {value!r} is not a whole number") from None
    return weights


def check_weights(weights: Mapping[str, Any]) -> dict[str, int]:
    """Weights are relative (they need not sum to 100), whole, >= 0, and not all zero."""
    checked: dict[str, int] = {}
    for version, weight in weights.items():
        if not isinstance(version, str) or not version:
            raise ValueError(f"version names must be non-empty strings, got {version!r}")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ValueError(f"weight of {version} must be a whole number >= 0, got {weight!r}")
        checked[version] = weight
    if checked and sum(checked.values()) == 0:
        raise ValueError("at least one version needs a weight above 0")
    return checked


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: Path = Field(
        description="model repository root; versions live in <repository>/<model>/<version>/"
    )
    model: str = Field(pattern=NAME_PATTERN, description="the model this server serves")
    versions: list[str] = Field(
        default_factory=list,
        description="versions to load at start; default: the newest complete version in the repository",
    )
    weights: dict[str, int] = Field(
        default_factory=dict,
        description="traffic weights for unversioned calls; default: all to the first version",
    )
    traffic_file: Path | None = Field(
        default=None,
        description="JSON/YAML file with the weights, watched at run time (the operator mounts a ConfigMap here)",
    )
    traffic_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_latency_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="how long the first request of a batch may wait for more; 0: run as soon as the model is free",
    )
    max_queue_size: int = Field(default=1024, ge=1, le=1_000_000, description="requests queued per version")
    max_queue_rows: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="rows queued per version before 429; default: 32 batches (32 x max_batch_size)",
    )
    max_request_rows: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="rows one request may carry (413 beyond); default and most: max_batch_size",
    )
    max_concurrent_requests: int = Field(
        default=128,
        ge=1,
        le=100_000,
        description="requests held at once, from arrival (body still being read) to response; beyond: 429",
    )
    request_read_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="the whole request body must arrive within this; else 408"
    )
    inline_below_us: float = Field(
        default=200.0,
        ge=0,
        le=100_000,
        description="run batches whose forward takes less than this on the event loop instead of the "
        "inference thread (0: always the thread)",
    )
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    auth_token_file: Path | None = None
    auth_token: str | None = Field(default=None, repr=False)
    admin_token_file: Path | None = Field(
        default=None, description="bearer token for /admin/*; none: admin off (never the auth token)"
    )
    admin_token: str | None = Field(default=None, repr=False)
    key_file: Path | None = None
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="torch intra-op threads; default: the CPU limit minus one (the event loop's), at least 1",
    )
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    graceful_timeout_seconds: float = Field(default=30.0, ge=0)
    drain_seconds: float = Field(
        default=0.0, ge=0, description="after SIGTERM, keep serving this long with readiness false"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("versions", mode="before")
    @classmethod
    def _split_versions(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("versions")
    @classmethod
    def _version_names(cls, value: list[str]) -> list[str]:
        import re

        for v in value:
            if not re.fullmatch(VERSION_PATTERN, v):
                raise ValueError(f"version {v!r} is not a valid version name ({VERSION_PATTERN})")
        if len(set(value)) != len(value):
            raise ValueError(f"versions {value} name a version twice")
        return value

    @field_validator("weights", mode="before")
    @classmethod
    def _parse_weights(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_weights(value)
        return value

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, value: dict[str, int]) -> dict[str, int]:
        return check_weights(value)

    @model_validator(mode="after")
    def _weights_name_loaded_versions(self) -> ServerSettings:
        if self.weights and self.versions:
            unknown = sorted(set(self.weights) - set(self.versions))
            if unknown:
                raise ValueError(
                    f"weights name {unknown} which are not among versions {self.versions}; "
                    "add them with --version or drop them from --weights"
                )
        return self

    @model_validator(mode="after")
    def _request_rows_fit_a_batch(self) -> ServerSettings:
        if self.max_request_rows is not None and self.max_request_rows > self.max_batch_size:
            raise ValueError(
                f"max_request_rows {self.max_request_rows} is above max_batch_size {self.max_batch_size}: "
                "a request must fit in one batch; raise --max-batch-size or lower --max-request-rows"
            )
        return self

    @property
    def request_rows(self) -> int:
        """Rows one request may carry."""
        return self.max_request_rows or self.max_batch_size

    @property
    def queue_rows(self) -> int:
        """Rows one version may hold queued."""
        return self.max_queue_rows or 32 * self.max_batch_size

    def initial_versions(self) -> list[str]:
        """Versions named by flags: --version, else the keys of --weights."""
        return list(self.versions) or list(self.weights)

    @classmethod
    def from_sources(cls, cli: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Env (`COXSWAIN_SERVER_*`) overlaid by the command line's non-None values."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in cls.model_fields:
            raw = env.get(ENV_PREFIX + field.upper())
            if raw is not None and raw != "":
                values[field] = raw
        values.update({k: v for k, v in cli.items() if v is not None and v != [] and v != {}})
        return cls.model_validate(values)
