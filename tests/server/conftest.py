"""Fixtures for the server tests: a model repository, and server processes that are always
stopped afterwards."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server_harness import RunningServer
from server_models import write_model


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[type[RunningServer]]:
    """Factory: start_server(args, env=...) -> RunningServer; all stopped at teardown."""
    started: list[RunningServer] = []

    class _Factory(RunningServer):
        def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
            super().__init__(args, tmp_path / f"server-{len(started)}.log", env)
            started.append(self)

    yield _Factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits v1, v2 (MLP, different weights), v3 (MLP, traced); cnn v1 (TorchScript), v2 (exported program)."""
    from coxswain.artifacts.manifest import ModelFormat

    root = tmp_path_factory.mktemp("repository")
    write_model(root, "digits", "v1", "mlp", seed=1)
    write_model(root, "digits", "v2", "mlp", seed=2)
    write_model(root, "digits", "v3", "mlp", seed=3, trace=True)
    write_model(root, "cnn", "v1", "cnn", seed=4, trace=True)
    write_model(root, "cnn", "v2", "cnn", seed=5, fmt=ModelFormat.EXPORTED_PROGRAM)
    return root
