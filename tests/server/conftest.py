"""Real server processes on loopback for the server tests; every one is stopped afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from model_factory import write_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {**os.environ, "COXSWAIN_CPU_LIMIT": "1", **(env or {})}
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coxswain_server", "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def wait_live(self, timeout: float = 60) -> None:
        self._wait("/v2/health/live", timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        self._wait("/v2/health/ready", timeout)

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not answering {path} after {timeout}s:\n{self.output()}")

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"server did not exit within {timeout}s:\n{self.output()}") from None

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            series, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()


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
