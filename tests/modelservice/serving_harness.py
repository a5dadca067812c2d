"""The operator's serving logic driven against real `coxswain-server` processes on loopback.

`LocalService` plays one ModelService: every `step()` it scrapes the servers' real /metrics
with the operator's scraper, runs the operator's planner, and does what the cluster would:
the traffic file the servers watch stands in for the ConfigMap volume, and spec.replicas /
status are carried from one step to the next as the API server would store them. Only the
API server and the kubelet are left out, so the autoscaler's and the canary analysis'
decisions here are the ones the operator makes on a cluster.

Used by tests/modelservice/ and bench/modelservice_*.py.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import torch
from torch import nn

from coxswain.api.modelservice import ModelService
from coxswain.modelservice import builders
from coxswain.modelservice.planner import ActionKind, Memory, Observed, Plan, plan
from coxswain.modelservice.scrape import PodSample, scrape

ROOT = Path(__file__).resolve().parents[2]
MODEL = "digits"
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
INFER_PATH = f"/v2/models/{MODEL}/infer"


class BrokenModel(nn.Module):
    """Loads and warms up (warm-up sends zeros) but fails every real request: a bad canary."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.abs().sum() > 0):
            raise RuntimeError("broken canary: this model fails every real request")
        return self.net(x)


class GoodModel(nn.Module):
    """The MLP 64 -> 128 -> 10 of the digits task."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _write(root: Path, version: str, module: nn.Module) -> None:
    from coxswain.artifacts.manifest import Architecture, ModelFormat, ModelManifest, TaskKind, TensorSpec
    from coxswain.artifacts.repository import write_version

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript's deprecation notice: still the format served
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module.eval()), buffer)
    manifest = ModelManifest(
        name=MODEL,
        version=version,
        created=datetime.now(UTC),
        format=ModelFormat.TORCHSCRIPT,
        model_file="model.pt",
        task=TaskKind.CLASSIFICATION,
        architecture=Architecture(kind="mlp"),
        inputs=[TensorSpec(name="input", dtype="float32", shape=[-1, 64])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[-1, 10])],
        labels=[f"digit-{i}" for i in range(10)],
        framework={"torch": torch.__version__},
        files={},
    )
    write_version(root, manifest, {"model.pt": buffer.getvalue()})


def write_repository(root: Path) -> Path:
    """digits v1 and v2 (good MLPs) and v3 (loads, then raises on every real input)."""
    for version, seed in (("v1", 1), ("v2", 2)):
        torch.manual_seed(seed)
        _write(root, version, GoodModel())
    _write(root, "v3", BrokenModel())
    return root


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_traffic(path: Path, weights: dict[str, int]) -> None:
    """Replace the file in one rename, as the kubelet swaps a ConfigMap volume's data."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(builders.traffic_document(weights))
    os.replace(tmp, path)


class LocalServer:
    """One `coxswain-server` process: a pod of the ModelService."""

    def __init__(
        self, repository: Path, traffic: Path, log: Path, host: str = "127.0.0.1", port: int | None = None
    ):
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log = log
        self.started = time.monotonic()
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "coxswain_server",
                "--host", host, "--port", str(self.port),
                "--repository", str(repository), "--model", MODEL,
                "--traffic-file", str(traffic), "--traffic-poll-seconds", "0.2",
                "--graceful-timeout-seconds", "10",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COXSWAIN_CPU_LIMIT": "1"},
            cwd=ROOT,
        )  # fmt: skip

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 90) -> float:
        """Seconds from process start to ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if self.ready():
                return time.monotonic() - self.started
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()


def _pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


class LocalService:
    """One ModelService: the operator's planner over real servers (see the module docstring)."""

    def __init__(self, spec: dict[str, Any], servers: list[LocalServer], traffic: Path) -> None:
        self.ms = ModelService.model_validate(
            {"metadata": {"name": MODEL, "namespace": "local", "uid": "local", "generation": 1}, "spec": spec}
        )
        self.servers = servers
        self.traffic = traffic
        self.memory = Memory()
        self.http = httpx.AsyncClient()
        self.history: list[Plan] = []
        self._written = traffic.read_text() if traffic.exists() else ""

    async def samples(self) -> dict[str, PodSample]:
        out: dict[str, PodSample] = {}
        for i, server in enumerate(self.servers):
            out.update(await scrape(self.http, [(f"pod-{i}", server.host)], server.port))
        return out

    async def step(self) -> Plan:
        samples = await self.samples()
        obs = Observed(
            deployment=None,
            service=None,
            traffic=None,
            hpa=None,
            pods=[_pod(f"pod-{i}") for i in range(len(self.servers))],
            trainingjob=None,
            samples=samples,
        )
        result = plan(self.ms, obs, self.memory, datetime.now(UTC), time.monotonic())
        self.memory = result.memory
        replicas = self.ms.spec.replicas
        for action in result.actions:
            if action.kind == ActionKind.SET_REPLICAS:
                replicas = action.replicas
        text = builders.traffic_document(result.weights)
        if text != self._written:  # as the kubelet: the file changes only when the ConfigMap does
            write_traffic(self.traffic, result.weights)
            self._written = text
        spec = self.ms.spec.model_copy(update={"replicas": replicas})
        self.ms = self.ms.model_copy(update={"status": result.status, "spec": spec})
        self.history.append(result)
        return result

    async def close(self) -> None:
        await self.http.aclose()


@contextmanager
def servers(repository: Path, traffic: Path, logs: Path, count: int) -> Iterator[list[LocalServer]]:
    started: list[LocalServer] = []
    try:
        for i in range(count):
            started.append(LocalServer(repository, traffic, logs / f"server-{i}.log"))
        for s in started:
            s.wait_ready()
        yield started
    finally:
        for s in started:
            s.stop()
