"""Rank 0 exports the trained model as a new version in the model repository.

Files: `model.torchscript.pt` (what the server loads; TorchScript needs no model class) and
`weights.pt` (the state_dict, for fine-tuning or for rebuilding from `architecture`), plus the
manifest written by `coxswain.artifacts.repository.write_version`, which checksums (and,
with a key, encrypts) every file and renames the version into place atomically.
"""

from __future__ import annotations

import copy
import io
import json
import platform
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from coxswain.artifacts.manifest import (
    Architecture,
    ModelFormat,
    ModelManifest,
    SourceJob,
    TaskKind,
    TensorSpec,
)
from coxswain.artifacts.repository import VersionExistsError, next_version, write_version
from coxswain_trainer import __version__
from coxswain_trainer.config import ExportTarget, JobIdentity
from coxswain_trainer.logs import log
from coxswain_trainer.models import ServingModel
from coxswain_trainer.tasks import Task

MODEL_FILE = "model.torchscript.pt"
WEIGHTS_FILE = "weights.pt"
_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.uint8: "uint8",
    torch.bool: "bool",
}


class ExportError(Exception):
    pass


@dataclass(frozen=True)
class ExportResult:
    path: Path
    uri: str
    model_name: str
    version: str


def _to_torchscript(model: nn.Module, example: torch.Tensor) -> bytes:
    """Script the model (keeps any control flow); fall back to tracing for user models that
    do not script. The result is loaded back and compared with eager mode before it is kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still works
        try:
            compiled = torch.jit.script(model)
        except Exception as script_error:
            log.warning(
                "torchscript_script_failed", reason=str(script_error).splitlines()[0], action="tracing"
            )
            compiled = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
        buffer = io.BytesIO()
        torch.jit.save(compiled, buffer)
        data = buffer.getvalue()
        reloaded = torch.jit.load(io.BytesIO(data))  # type: ignore[no-untyped-call]
        with torch.no_grad():
            want, got = model(example), reloaded(example)
    if not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise ExportError("the TorchScript model does not reproduce the trained model's outputs")
    return data


def build_manifest(
    task: Task,
    target: ExportTarget,
    version: str,
    job: JobIdentity,
    eval_metrics: dict[str, float],
    train_config: dict[str, Any],
) -> ModelManifest:
    data = task.data
    out_name = "logits" if data.kind == "classification" else "prediction"
    return ModelManifest(
        name=target.model_name,
        version=version,
        created=datetime.now(UTC),
        format=ModelFormat.TORCHSCRIPT,
        model_file=MODEL_FILE,
        task=TaskKind.CLASSIFICATION if data.kind == "classification" else TaskKind.REGRESSION,
        architecture=Architecture(kind=task.architecture_kind, config=task.architecture_config),
        inputs=[
            TensorSpec(
                name="input", dtype=_DTYPES.get(data.input_dtype, "float32"), shape=[-1, *data.input_shape]
            )
        ],
        outputs=[TensorSpec(name=out_name, dtype="float32", shape=[-1, data.num_outputs])],
        labels=data.labels,
        metrics=eval_metrics,
        framework={
            "torch": torch.__version__,
            "python": platform.python_version(),
            "coxswain-trainer": __version__,
        },
        source=SourceJob(namespace=job.namespace, name=job.name, attempt=job.attempt, uid=job.uid),
        files={},
        extra={"training": train_config, "weightsFile": WEIGHTS_FILE},
    )


def export_model(
    task: Task,
    target: ExportTarget,
    job: JobIdentity,
    eval_metrics: dict[str, float],
    train_config: dict[str, Any],
) -> ExportResult:
    data = task.data
    core = copy.deepcopy(task.model).to("cpu").eval()
    serving = ServingModel(
        core, data.feature_mean, data.feature_std, data.target_mean, data.target_std
    ).eval()
    example = torch.zeros(2, *data.input_shape, dtype=data.input_dtype)
    files = {MODEL_FILE: _to_torchscript(serving, example)}
    weights = io.BytesIO()
    torch.save(serving.state_dict(), weights)
    files[WEIGHTS_FILE] = weights.getvalue()
    # An explicit version that appeared meanwhile is refused; a default one moves on to the next.
    for _ in range(20):
        version = target.version or next_version(target.repository, target.model_name)
        manifest = build_manifest(task, target, version, job, eval_metrics, train_config)
        try:
            path = write_version(target.repository, manifest, files, key=target.key)
        except VersionExistsError:
            if target.version:
                raise
            continue
        uri = f"{target.repository_uri}/{target.model_name}"
        log.info(
            "model_exported",
            path=str(path),
            uri=uri,
            model=target.model_name,
            version=version,
            encrypted=target.key is not None,
        )
        return ExportResult(path, uri, target.model_name, version)
    raise ExportError(f"could not find a free version for {target.model_name} in {target.repository}")


def write_termination_log(
    path: Path, result: ExportResult | None, final_step: int, progress: dict[str, Any] | None = None
) -> None:
    """The one-line JSON the operator reads from the terminated container (when writable).

    `progress` is rank 0's last /progress record: a job shorter than the operator's pull
    interval still ends with its true step, loss and eval metric in status.
    """
    record: dict[str, Any] = {"finalStep": final_step}
    if progress is not None:
        record["progress"] = progress
    if result is not None:
        record["exportedModel"] = {
            "uri": result.uri,
            "modelName": result.model_name,
            "version": result.version,
        }
    try:
        with open(path, "w") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError:
        pass  # outside Kubernetes there is usually no /dev/termination-log; the log line says the same
