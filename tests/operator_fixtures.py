"""The operator as a real process against the local cluster (tests marked `cluster`).

`operator` (module): `coxswain operator run` watching namespaces `op-*` only, so other
test sessions sharing the cluster are left alone. `op_namespace` (function): a fresh
`op-…` namespace per test. With $COXSWAIN_OPERATOR_KUBECONFIG set, the operator (only) uses
that kubeconfig instead of the cluster's admin one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster_fixtures import ClusterHandle, fresh_namespace
from coxswain.devcluster import DevCluster

NAMESPACE_PREFIX = "op-"
KUBECONFIG_ENV = "COXSWAIN_OPERATOR_KUBECONFIG"


# Where the tests' hostPath volumes live; anything else is refused (tests of the policy use /etc).
ALLOWED_HOST_PATHS = ("/var/lib/coxswain", tempfile.gettempdir())
HOST_PATH_FLAGS = [flag for path in ALLOWED_HOST_PATHS for flag in ("--host-path-prefix", path)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorProcess:
    cluster: ClusterHandle
    log_path: Path
    metrics_port: int
    health_port: int
    proc: subprocess.Popen[bytes] | None = None
    # Who acts: this process alone, or (e.g. ["--lease", NAME]) the holder of a Lease.
    leadership: list[str] = field(default_factory=lambda: ["--standalone"])

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it for its whole life
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coxswain",
                "operator",
                "run",
                *self.leadership,
                "-n",
                f"{NAMESPACE_PREFIX}*",
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(self.health_port),
                # The tenancy policy of a development cluster: the tests keep models and
                # checkpoints under these host paths, and reference Secrets named allowed-*.
                "--allow-host-path",
                *HOST_PATH_FLAGS,
                "--allow-secret",
                f"{NAMESPACE_PREFIX}*=allowed-*",
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def env(self) -> dict[str, str]:
        env = self.cluster.env()
        # Optional: run the operator with another identity (tests/chart runs the controller
        # tests as the chart's ServiceAccount, to prove its RBAC rules are enough).
        override = os.environ.get(KUBECONFIG_ENV)
        if override:
            env["KUBECONFIG"] = override
        return env

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text


def host_operator(cluster: ClusterHandle) -> Iterator[OperatorProcess]:
    """The operator as a host process on `cluster` (watching op-* namespaces) for a fixture's life.
    A controller manager or scheduler that exited earlier in the session is restarted first:
    without it every test of the module would time out waiting for pods."""
    restarted = DevCluster(cluster.kubeconfig.parent).heal()
    if restarted:
        print(f"restarted exited cluster components: {', '.join(restarted)}")
    log_path = Path(tempfile.mkdtemp(prefix="coxswain-operator-")) / "operator.log"
    op = OperatorProcess(cluster, log_path, free_port(), free_port())
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(f"operator log: {log_path}")


@pytest.fixture(scope="module")
def operator(cluster: ClusterHandle) -> Iterator[OperatorProcess]:
    yield from host_operator(cluster)


@pytest.fixture
def op_namespace(cluster: ClusterHandle) -> Iterator[str]:
    """A namespace the host-process operator watches (its name starts with op-)."""
    yield from fresh_namespace(cluster, NAMESPACE_PREFIX)
