"""What can change an image: .dockerignore keeps dev-only code out, so editing it rebuilds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from coxswain.devimages.inputs import context_files, inputs_hash, is_ignored, read_ignore_patterns

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_dev_only_code_is_not_in_the_build_context() -> None:
    patterns = read_ignore_patterns(REPO)
    for dev_only in (
        "operator/coxswain/devcluster/cluster.py",
        "operator/coxswain/nodeagent/agent.py",
        "operator/coxswain/devimages/build.py",
        "operator/coxswain/cli/dev.py",
        "operator/coxswain/cli/demo.py",
        "operator/coxswain/trainingjob/__pycache__/planner.cpython-311.pyc",
        "tests/conftest.py",
    ):
        assert is_ignored(dev_only, patterns), dev_only
    for shipped in (
        "operator/coxswain/handlers.py",
        "trainer_image/coxswain_trainer/loop.py",
        "pyproject.toml",
    ):
        assert not is_ignored(shipped, patterns), shipped
    names = {p.relative_to(REPO).as_posix() for p in context_files(REPO)}
    assert "server_image/coxswain_server/cli.py" in names
    assert not any("devcluster" in n or "nodeagent" in n for n in names)


def test_inputs_hash_changes_with_shipped_code_only(tmp_path: Path) -> None:
    for rel, text in {
        ".dockerignore": "operator/coxswain/devcluster\n**/__pycache__\n",
        "pyproject.toml": "[project]\n",
        "operator/coxswain/handlers.py": "x = 1\n",
        "operator/coxswain/devcluster/cluster.py": "y = 1\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    before = inputs_hash(tmp_path)
    (tmp_path / "operator/coxswain/devcluster/cluster.py").write_text("y = 2\n")
    (tmp_path / "operator/coxswain/__pycache__").mkdir()
    (tmp_path / "operator/coxswain/__pycache__/handlers.pyc").write_bytes(b"\0")
    assert inputs_hash(tmp_path) == before
    (tmp_path / "operator/coxswain/handlers.py").write_text("x = 2\n")
    assert inputs_hash(tmp_path) != before
    assert inputs_hash(tmp_path, ["base-a"]) != inputs_hash(tmp_path, ["base-b"])
