"""Configuration: a TrainingJob or its spec, validated before any work with the field named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from coxswain_trainer.config import ConfigError, load_config

pytestmark = pytest.mark.unit


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"COXSWAIN_CHECKPOINT_DIR": str(tmp_path / "checkpoints"), **extra}


def _write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_bare_spec_is_accepted(tmp_path: Path, make_spec: Any) -> None:
    config = load_config(_write(tmp_path, make_spec()), env=_env(tmp_path))
    assert config.spec.optimization.batch_size == 64
    assert config.job.name is None
    assert config.metrics_port == 9400


def test_full_object_gives_the_job_identity(tmp_path: Path, make_spec: Any) -> None:
    document = {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "digits", "namespace": "ml", "uid": "u-1"},
        "spec": make_spec(),
        "status": {"phase": "Running"},
    }
    config = load_config(
        _write(tmp_path, document), env=_env(tmp_path, COXSWAIN_ATTEMPT="2", COXSWAIN_METRICS_PORT="0")
    )
    assert (config.job.name, config.job.namespace, config.job.uid, config.job.attempt) == (
        "digits",
        "ml",
        "u-1",
        2,
    )
    assert config.metrics_port == 0


def test_bad_optimizer_names_the_field_and_allowed_values(tmp_path: Path, make_spec: Any) -> None:
    spec = make_spec(optimization={"optimizer": {"name": "rmsprop"}})
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, spec), env=_env(tmp_path))
    assert "spec.optimization.optimizer.name: Input should be 'sgd', 'adam' or 'adamw'" in str(err.value)


def test_error_path_in_a_full_object_starts_at_spec(tmp_path: Path, make_spec: Any) -> None:
    document = {
        "kind": "TrainingJob",
        "metadata": {"name": "x"},
        "spec": make_spec(optimization={"batchSize": 0}),
    }
    with pytest.raises(
        ConfigError, match=r"^spec\.optimization\.batchSize: Input should be greater than or equal to 1"
    ):
        load_config(_write(tmp_path, document), env=_env(tmp_path))


def test_cross_field_rule_is_reported(tmp_path: Path, make_spec: Any) -> None:
    spec = make_spec(task={"builtin": {"model": "cnn", "dataset": "diabetes"}})
    with pytest.raises(ConfigError, match="cnn needs an image dataset"):
        load_config(_write(tmp_path, spec), env=_env(tmp_path))


def test_batch_must_divide_across_processes(tmp_path: Path, make_spec: Any) -> None:
    spec = make_spec(optimization={"batchSize": 65})
    with pytest.raises(
        ConfigError, match=r"spec\.optimization\.batchSize: .*multiple of the number of processes \(2\)"
    ):
        load_config(_write(tmp_path, spec), env=_env(tmp_path, WORLD_SIZE="2"))


def test_export_of_a_bare_spec_needs_a_model_name(tmp_path: Path, make_spec: Any) -> None:
    spec = make_spec(export={"repository": {"hostPath": {"path": str(tmp_path / "models")}}})
    with pytest.raises(ConfigError, match=r"spec\.export\.modelName"):
        load_config(_write(tmp_path, spec), env=_env(tmp_path))
    config = load_config(_write(tmp_path, spec), env=_env(tmp_path, COXSWAIN_JOB_NAME="digits"))
    assert config.export is not None
    assert config.export.model_name == "digits"
    assert config.export.repository == tmp_path / "models"
    assert config.export.repository_uri == f"file://{tmp_path / 'models'}"


def test_encryption_without_a_key_is_refused_before_training(tmp_path: Path, make_spec: Any) -> None:
    spec = make_spec(
        export={
            "repository": {"persistentVolumeClaim": {"claimName": "models"}},
            "modelName": "m",
            "encryption": {"keySecretRef": {"name": "k", "key": "key"}},
        }
    )
    env = _env(tmp_path, COXSWAIN_MODEL_REPOSITORY=str(tmp_path))
    with pytest.raises(ConfigError, match=r"spec\.export\.encryption: .*COXSWAIN_ENCRYPTION_KEY_FILE"):
        load_config(_write(tmp_path, spec), env=env)
    key_file = tmp_path / "key"
    key_file.write_text("11" * 32)
    config = load_config(_write(tmp_path, spec), env={**env, "COXSWAIN_ENCRYPTION_KEY_FILE": str(key_file)})
    assert config.export is not None
    assert config.export.key == bytes([0x11]) * 32
    assert config.export.repository_uri == "pvc://models"


def test_existing_explicit_version_is_refused_before_training(tmp_path: Path, make_spec: Any) -> None:
    (tmp_path / "m" / "v3").mkdir(parents=True)
    spec = make_spec(
        export={"repository": {"hostPath": {"path": str(tmp_path)}}, "modelName": "m", "version": "v3"}
    )
    with pytest.raises(ConfigError, match=r"spec\.export\.version: m v3 already exists"):
        load_config(_write(tmp_path, spec), env=_env(tmp_path))


def test_unknown_custom_module_is_a_config_error(tmp_path: Path, make_spec: Any) -> None:
    spec = make_spec(task={"builtin": None, "custom": {"module": "no_such_module_here"}})
    spec["task"] = {"custom": {"module": "no_such_module_here"}}
    with pytest.raises(ConfigError, match=r"spec\.task\.custom\.module: cannot import 'no_such_module_here'"):
        load_config(_write(tmp_path, spec), env=_env(tmp_path))


def test_unreadable_or_non_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config: cannot read"):
        load_config(tmp_path / "missing.yaml", env=_env(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env=_env(tmp_path))


def test_unwritable_checkpoint_dir_is_refused_before_training(tmp_path: Path, make_spec: Any) -> None:
    (tmp_path / "a-file").write_text("")
    env = {"COXSWAIN_CHECKPOINT_DIR": str(tmp_path / "a-file" / "checkpoints")}
    with pytest.raises(ConfigError, match="COXSWAIN_CHECKPOINT_DIR: cannot write to"):
        load_config(_write(tmp_path, make_spec()), env=env)
    # Only rank 0 writes checkpoints; other ranks do not need the directory.
    load_config(_write(tmp_path, make_spec()), env={**env, "RANK": "1"})


EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("trainingjob-*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_trainingjob_is_a_valid_trainer_config(
    tmp_path: Path, example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(example.parent))  # the image puts examples/ on PYTHONPATH
    env = _env(tmp_path, COXSWAIN_MODEL_REPOSITORY=str(tmp_path / "models"), WORLD_SIZE="2")
    # An example may carry the objects it needs beside the TrainingJob (a Kueue queue); the
    # trainer gets the TrainingJob alone, as the operator's ConfigMap holds it.
    (job,) = [d for d in yaml.safe_load_all(example.read_text()) if d and d.get("kind") == "TrainingJob"]
    config = load_config(_write(tmp_path, job), env=env)
    assert config.job.name
    if config.export is not None:
        assert config.export.model_name
