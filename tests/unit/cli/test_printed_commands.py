"""Commands the CLI and the demo print to the user run as printed (issue 13, item 5)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from coxswain.cli.dev import cluster_command

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def _run_as_printed(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # A shell without the venv on PATH, the way a user pastes the line into a new terminal.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)


def test_printed_cluster_down_with_dir_runs_as_printed(tmp_path: Path) -> None:
    command = cluster_command("down", tmp_path / "no cluster here")
    assert "--dir" in command
    done = _run_as_printed(command, REPO)
    assert done.returncode == 0, done.stderr
    assert "nothing was running" in done.stderr


def test_dir_flag_is_accepted_before_and_after_the_action(tmp_path: Path) -> None:
    python = REPO / ".venv" / "bin" / "python"
    for argv in (["--dir", str(tmp_path), "status"], ["status", "--dir", str(tmp_path)]):
        done = subprocess.run(
            [str(python), "-m", "coxswain", "dev", "cluster", *argv], capture_output=True, text=True
        )
        assert f"no cluster in {tmp_path}" in done.stdout, (argv, done.stderr)
