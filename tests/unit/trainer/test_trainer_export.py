"""Export: a new version with verified checksums, optional encryption, never overwritten."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from coxswain.api.trainingjob import TrainingJobSpec
from coxswain.artifacts.manifest import ModelFormat
from coxswain.artifacts.repository import ModelRepositoryError, VersionExistsError, read_verified_files
from coxswain_trainer.config import ExportTarget, JobIdentity
from coxswain_trainer.export import MODEL_FILE, WEIGHTS_FILE, export_model, write_termination_log
from coxswain_trainer.tasks import Task, build_task

pytestmark = pytest.mark.unit
KEY = bytes(range(32))


@pytest.fixture
def task(make_spec: Any) -> Task:
    spec = TrainingJobSpec.model_validate(make_spec())
    return build_task(spec, torch.device("cpu"))


def _target(root: Path, version: str | None = None, key: bytes | None = None) -> ExportTarget:
    return ExportTarget(root, f"file://{root}", "digits", version, key)


def _load_torchscript(data: bytes) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still works
        return torch.jit.load(io.BytesIO(data))  # type: ignore[no-untyped-call,no-any-return]


def test_export_writes_a_verifiable_torchscript_version(tmp_path: Path, task: Task) -> None:
    job = JobIdentity(name="digits", namespace="ml", attempt=1)
    result = export_model(task, _target(tmp_path), job, {"accuracy": 0.5}, {"seed": 0})
    assert result.version == "v1"
    assert result.uri == f"file://{tmp_path}/digits"
    manifest, files = read_verified_files(result.path)
    assert manifest.format == ModelFormat.TORCHSCRIPT
    assert manifest.model_file == MODEL_FILE
    assert set(files) == {MODEL_FILE, WEIGHTS_FILE}
    assert manifest.inputs[0].shape == [-1, 64]
    assert manifest.outputs[0].shape == [-1, 10]
    assert manifest.labels == [str(d) for d in range(10)]
    assert manifest.metrics == {"accuracy": 0.5}
    assert manifest.source.name == "digits"
    assert manifest.source.namespace == "ml"
    assert manifest.architecture.kind == "mlp"
    assert manifest.architecture.config["hiddenSizes"] == [32]
    assert "torch" in manifest.framework
    # The served model takes raw pixels: standardisation is inside it.
    raw = task.data.eval.x[:4] * task.data.feature_std + task.data.feature_mean  # type: ignore[attr-defined]
    scripted = _load_torchscript(files[MODEL_FILE])
    with torch.no_grad():
        assert torch.allclose(scripted(raw), task.model(task.data.eval.x[:4]), atol=1e-5)  # type: ignore[attr-defined]


def test_default_version_is_the_next_free_one_and_none_is_overwritten(tmp_path: Path, task: Task) -> None:
    first = export_model(task, _target(tmp_path), JobIdentity(), {}, {})
    second = export_model(task, _target(tmp_path), JobIdentity(), {}, {})
    assert (first.version, second.version) == ("v1", "v2")
    before = (first.path / "manifest.json").read_bytes()
    with pytest.raises(VersionExistsError):
        export_model(task, _target(tmp_path, version="v1"), JobIdentity(), {}, {})
    assert (first.path / "manifest.json").read_bytes() == before


def test_encrypted_export_needs_its_key(tmp_path: Path, task: Task) -> None:
    result = export_model(task, _target(tmp_path, key=KEY), JobIdentity(), {}, {})
    with pytest.raises(ModelRepositoryError, match="encrypted"):
        read_verified_files(result.path)
    with pytest.raises(ModelRepositoryError, match="not the one"):
        read_verified_files(result.path, key=bytes(32))
    manifest, files = read_verified_files(result.path, key=KEY)
    assert manifest.encryption is not None
    assert manifest.encryption.format == 2  # bound to model, version and path (issue 15)
    _load_torchscript(files[MODEL_FILE])
    # What is on disk is not loadable as a model without the key.
    with pytest.raises(Exception):  # noqa: B017, PT011 - torch raises various errors for garbage
        _load_torchscript((result.path / MODEL_FILE).read_bytes())


def test_tampered_file_is_detected(tmp_path: Path, task: Task) -> None:
    result = export_model(task, _target(tmp_path), JobIdentity(), {}, {})
    weights = result.path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelRepositoryError, match="does not match its sha256"):
        read_verified_files(result.path)


def test_termination_log_is_one_json_line(tmp_path: Path, task: Task) -> None:
    result = export_model(task, _target(tmp_path / "repo"), JobIdentity(), {}, {})
    log_file = tmp_path / "termination-log"
    write_termination_log(log_file, result, 42)
    record = json.loads(log_file.read_text())
    assert record == {
        "finalStep": 42,
        "exportedModel": {
            "uri": f"file://{tmp_path / 'repo'}/digits",
            "modelName": "digits",
            "version": "v1",
        },
    }
    write_termination_log(tmp_path / "no" / "such" / "dir", result, 1)  # unwritable: ignored
