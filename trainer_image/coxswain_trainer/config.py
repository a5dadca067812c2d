"""Load and validate the trainer's configuration: a TrainingJob (or just its spec) plus the
environment the operator sets. Everything a run needs is checked here, before torch is
imported and before any work starts; a problem is a ConfigError naming the field.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from coxswain.api.trainingjob import GradientDescent, Strategy, TrainingJob, TrainingJobSpec
from coxswain.artifacts import crypto
from coxswain.artifacts.manifest import NAME_PATTERN
from coxswain.artifacts.repository import version_dir

DEFAULT_CHECKPOINT_DIR = "/var/lib/coxswain/checkpoints"
DEFAULT_MODEL_REPOSITORY = "/models"
DEFAULT_METRICS_PORT = 9400
CUSTOM_TASK_FUNCTIONS = ("build_model", "build_datasets", "loss_fn")


class ConfigError(Exception):
    """The configuration cannot run; the message names the field and what is allowed."""


@dataclass(frozen=True)
class JobIdentity:
    """Which TrainingJob this run belongs to (recorded in checkpoints' and exports' metadata)."""

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    attempt: int | None = None


@dataclass(frozen=True)
class ExportTarget:
    repository: Path
    repository_uri: str  # <scheme>://<where>, the model URI is this plus /<model>
    model_name: str
    version: str | None
    key: bytes | None


@dataclass(frozen=True)
class TrainerConfig:
    spec: TrainingJobSpec
    job: JobIdentity
    checkpoint_dir: Path
    export: ExportTarget | None
    metrics_port: int
    termination_log: Path


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, `spec.optimization.optimizer.name: Input should be 'sgd', ...`."""
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {msg}")
    return "\n".join(lines)


def parse_document(document: Any) -> tuple[TrainingJobSpec, JobIdentity]:
    """A full TrainingJob object (with apiVersion/kind/metadata/spec) or a bare spec."""
    if not isinstance(document, Mapping):
        raise ConfigError(
            f"config: expected a TrainingJob or its spec as a mapping, got {type(document).__name__}"
        )
    if "spec" in document or "kind" in document or "apiVersion" in document:
        try:
            job = TrainingJob.model_validate({k: v for k, v in document.items() if k != "status"})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix="")) from exc
        meta = job.metadata
        return job.spec, JobIdentity(name=meta.name, namespace=meta.namespace, uid=meta.uid)
    try:
        return TrainingJobSpec.model_validate(document), JobIdentity()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def _int_env(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: must be an integer, got {value!r}") from exc


def _check_custom_module(module: str) -> None:
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        found = None
        reason = str(exc)
    else:
        reason = "not found on the Python path"
    if found is None:
        raise ConfigError(
            f"spec.task.custom.module: cannot import {module!r} ({reason}); it must be installed in the trainer image "
            "or on PYTHONPATH"
        )
    imported = importlib.import_module(module)
    missing = [f for f in CUSTOM_TASK_FUNCTIONS if not callable(getattr(imported, f, None))]
    if missing:
        raise ConfigError(
            f"spec.task.custom.module: {module} does not define {', '.join(missing)}; a custom task module "
            f"provides {', '.join(f + '(config)' for f in CUSTOM_TASK_FUNCTIONS)}"
        )


def _export_target(spec: TrainingJobSpec, job: JobIdentity, env: Mapping[str, str]) -> ExportTarget | None:
    export = spec.export
    if export is None:
        return None
    volume = export.repository
    if env.get("COXSWAIN_MODEL_REPOSITORY"):
        repository = Path(env["COXSWAIN_MODEL_REPOSITORY"])
    elif volume.host_path is not None:
        repository = Path(volume.host_path.path)  # a run by hand on the node itself
    else:
        repository = Path(DEFAULT_MODEL_REPOSITORY)
    if volume.persistent_volume_claim is not None:
        uri = f"pvc://{volume.persistent_volume_claim.claim_name}"
    elif volume.host_path is not None:
        uri = f"file://{volume.host_path.path.rstrip('/')}"
    else:
        uri = f"file://{repository}"
    name = export.model_name or job.name
    if not name:
        raise ConfigError(
            "spec.export.modelName: required when the config has no metadata.name (a bare spec) and "
            "COXSWAIN_JOB_NAME is not set; use a DNS-1123 label such as digits-cnn"
        )
    if not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(
            f"spec.export.modelName: {name!r} (from metadata.name) is not a DNS-1123 label; set modelName explicitly"
        )
    if export.version is not None and version_dir(repository, name, export.version).exists():
        raise ConfigError(
            f"spec.export.version: {name} {export.version} already exists in {repository}; versions are never "
            "overwritten: choose another version or leave it unset for the next free v<N>"
        )
    key_file = env.get("COXSWAIN_ENCRYPTION_KEY_FILE") or None
    try:
        key = crypto.load_key(key_file) if key_file else crypto.load_key(None)
    except (OSError, crypto.InvalidKeyError) as exc:
        source = f"COXSWAIN_ENCRYPTION_KEY_FILE={key_file}" if key_file else "COXSWAIN_ENCRYPTION_KEY"
        raise ConfigError(f"spec.export.encryption: the key from {source} is unusable: {exc}") from exc
    if export.encryption is not None and key is None:
        raise ConfigError(
            "spec.export.encryption: encryption is on but no key was given; set COXSWAIN_ENCRYPTION_KEY_FILE "
            "(the operator mounts the Secret keySecretRef there) or COXSWAIN_ENCRYPTION_KEY"
        )
    return ExportTarget(repository, uri, name, export.version, key)


def _check_writable(directory: Path, variable: str, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        writable = os.access(directory, os.W_OK | os.X_OK)
        reason = "permission denied"
    except OSError as exc:
        writable, reason = False, exc.strerror or str(exc)
    if not writable:
        raise ConfigError(
            f"{variable}: cannot write to {directory} ({reason}); mount {what} there writable, or point "
            f"{variable} at a writable directory"
        )


def check_world(spec: TrainingJobSpec, world_size: int) -> None:
    """Checks that need the real world size (torchrun's WORLD_SIZE, which may differ from
    nodes * procsPerNode in a run by hand)."""
    opt = spec.optimization
    if opt.gradient_descent == GradientDescent.MINI_BATCH and opt.batch_size % world_size:
        lower = opt.batch_size - opt.batch_size % world_size
        raise ConfigError(
            f"spec.optimization.batchSize: the global batch size {opt.batch_size} must be a multiple of the "
            f"number of processes ({world_size}) so each gets the same share; use {lower or world_size} or "
            f"{lower + world_size}"
        )


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> TrainerConfig:
    env = os.environ if env is None else env
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {exc}") from exc
    spec, job = parse_document(document)
    job = JobIdentity(
        name=env.get("COXSWAIN_JOB_NAME") or job.name,
        namespace=env.get("COXSWAIN_JOB_NAMESPACE") or job.namespace,
        uid=job.uid,
        attempt=_int_env(env, "COXSWAIN_ATTEMPT", None),
    )
    world_size = _int_env(env, "WORLD_SIZE", 1) or 1
    check_world(spec, world_size)
    if spec.task.custom is not None:
        _check_custom_module(spec.task.custom.module)
    port = _int_env(env, "COXSWAIN_METRICS_PORT", None)
    if port is None:
        port = spec.ports.metrics
    if not 0 <= port <= 65535:
        raise ConfigError(f"COXSWAIN_METRICS_PORT: {port} is not a port (0..65535; 0 picks a free one)")
    checkpoint_dir = Path(env.get("COXSWAIN_CHECKPOINT_DIR") or DEFAULT_CHECKPOINT_DIR)
    export = _export_target(spec, job, env)
    main_rank = (_int_env(env, "RANK", 0) or 0) == 0
    if main_rank or (spec.optimization.strategy == Strategy.FSDP and world_size > 1):
        # Rank 0 writes both (under fsdp every rank writes its checkpoint shard); finding out
        # after hours of training would waste them.
        _check_writable(checkpoint_dir, "COXSWAIN_CHECKPOINT_DIR", "the checkpoint volume")
    if main_rank and export is not None:
        _check_writable(export.repository, "COXSWAIN_MODEL_REPOSITORY", "spec.export.repository")
    return TrainerConfig(
        spec=spec,
        job=job,
        checkpoint_dir=checkpoint_dir,
        export=export,
        metrics_port=port,
        termination_log=Path(env.get("COXSWAIN_TERMINATION_LOG") or "/dev/termination-log"),
    )
