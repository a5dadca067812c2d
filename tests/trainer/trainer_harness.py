"""Run coxswain_trainer as real processes, the way torchrun would start them.

Each rank is `python -m coxswain_trainer` with torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT), so a test can SIGKILL or SIGTERM one rank and watch the others.
Logs are JSON lines (COXSWAIN_LOG_FORMAT=json), one file per rank.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]

SMALL_SPEC: dict[str, Any] = {
    "task": {"builtin": {"model": "mlp", "dataset": "digits", "hiddenSizes": [32]}},
    "optimization": {"batchSize": 64, "epochs": 2},
    "checkpoint": {"intervalSteps": 10, "keep": 3},
}


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gang:
    """The processes of one run and where their logs go."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    workdir: Path
    started: float = field(default_factory=time.monotonic)

    def wait(self, timeout: float = 300.0) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"trainer did not finish in {timeout}s; logs:\n{self.dump()}") from None
        return codes

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def events(self, rank: int = 0) -> list[dict[str, Any]]:
        out = []
        for line in self.logs[rank].read_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                    out.append(json.loads(line))
        return out

    def find(self, event: str, rank: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events(rank) if e.get("event") == event]

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 300.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if all(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.02)
        if predicate():
            return
        self.kill()
        raise AssertionError(f"timed out waiting for {what}; logs:\n{self.dump()}")

    def dump(self) -> str:
        return "\n".join(
            f"--- rank {i}\n{p.read_text()[-4000:]}" for i, p in enumerate(self.logs) if p.exists()
        )


def launch(
    spec: dict[str, Any],
    workdir: Path,
    *,
    world_size: int = 1,
    env: dict[str, str] | None = None,
    checkpoint_dir: Path | None = None,
    name: str = "run",
    rank_env: dict[int, dict[str, str]] | None = None,
) -> Gang:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump(spec))
    port = free_port()
    procs, logs = [], []
    for rank in range(world_size):
        rank_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "examples"), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1",
            "COXSWAIN_LOG_FORMAT": "json",
            "COXSWAIN_METRICS_PORT": "0",
            "COXSWAIN_CHECKPOINT_DIR": str(checkpoint_dir or workdir / "checkpoints"),
            "COXSWAIN_MODEL_REPOSITORY": str(workdir / "models"),
            "COXSWAIN_TERMINATION_LOG": str(workdir / f"termination-log-{rank}"),
            "COXSWAIN_COLLECTIVE_TIMEOUT_SECONDS": "30",
            **(env or {}),
            **(rank_env or {}).get(rank, {}),
        }
        if world_size > 1:
            rank_env.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world_size),
                LOCAL_WORLD_SIZE=str(world_size),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
        log_path = workdir / f"{name}-rank{rank}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - the child owns it for its lifetime
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "coxswain_trainer", "--config", str(config)],
                env=rank_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        )
        log_file.close()
        logs.append(log_path)
    return Gang(procs, logs, workdir)


def signal_rank(gang: Gang, rank: int, signum: int = signal.SIGKILL) -> None:
    gang.procs[rank].send_signal(signum)
