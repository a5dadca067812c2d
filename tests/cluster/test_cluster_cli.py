"""`coxswain dev cluster up|status|env|down` on clusters of their own (temporary cluster
directories, free ports), so these tests never disturb the shared cluster: `down` leaves no
process and no port behind, also after Ctrl-C, a killed `up`, a lost state file or a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coxswain.devcluster import DevCluster
from coxswain.devcluster.binaries import locate_binaries
from coxswain.devcluster.processes import is_alive, marked_processes, port_in_use
from coxswain.devcluster.state import ClusterState, ProcessRecord, load_state

pytestmark = pytest.mark.cluster


def cli(cluster_dir: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coxswain", "dev", "cluster", "--dir", str(cluster_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def up_in_background(cluster_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coxswain",
            "dev",
            "cluster",
            "--dir",
            str(cluster_dir),
            "up",
            "--gpu-nodes=1",
            "--cpu-nodes=0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_recorded(cluster_dir: Path, component: str, timeout: float = 60) -> ClusterState:
    """Wait until `up` has recorded (so started) `component`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = load_state(DevCluster(cluster_dir).paths)
        if state and any(p.name == component for p in state.processes):
            return state
        time.sleep(0.05)
    pytest.fail(f"`up` did not start {component} within {timeout} s")


def assert_nothing_left(cluster_dir: Path, state: ClusterState) -> None:
    alive = [f"{p.name} ({p.pid})" for p in state.processes if is_alive(p)]
    assert not alive, f"still running: {alive}"
    assert not marked_processes(cluster_dir), "processes of the cluster are still running"
    busy = [f"{name}={port}" for name, port in state.ports.items() if port_in_use(port)]
    assert not busy, f"ports still listening: {busy}"
    assert not state.data_dir.exists(), "etcd's data directory was not removed"
    assert not DevCluster(cluster_dir).paths.state_file.exists()


def kill_component(state: ClusterState, name: str) -> ProcessRecord:
    """SIGKILL one component (a crash) and wait until it is gone."""
    record = next(p for p in state.processes if p.name == name)
    os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    return record


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "cluster"
    yield directory
    # Whatever a test did, leave no cluster running.
    DevCluster(directory).down()


def test_up_status_env_down_leaves_no_process_or_port(cluster_dir: Path) -> None:
    started = cli(cluster_dir, "up", "--gpu-nodes=1", "--cpu-nodes=1")
    assert started.returncode == 0, started.stderr
    state = load_state(DevCluster(cluster_dir).paths)
    assert state is not None
    assert state.ready

    status = cli(cluster_dir, "status")
    assert status.returncode == 0, status.stdout
    assert "healthy" in status.stdout
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        assert name in status.stdout

    env = cli(cluster_dir, "env").stdout
    assert f"export KUBECONFIG={cluster_dir / 'kubeconfig'}" in env
    assert f"export PATH={state.bin_dir}:$PATH" in env
    nodes = subprocess.run(
        ["bash", "-c", f"{env}\nkubectl get nodes -o name"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(nodes) == ["node/kwok-cpu-0", "node/kwok-gpu-0"]

    # A second `up` reuses the healthy cluster instead of starting another.
    again = cli(cluster_dir, "up", "--gpu-nodes=1", "--cpu-nodes=1")
    assert again.returncode == 0
    assert "reusing" in again.stderr
    assert [p.pid for p in load_state(DevCluster(cluster_dir).paths).processes] == [
        p.pid for p in state.processes
    ]

    down = cli(cluster_dir, "down")
    assert down.returncode == 0
    assert_nothing_left(cluster_dir, state)
    assert cli(cluster_dir, "status").returncode == 1


def test_ctrl_c_during_up_stops_what_was_started(cluster_dir: Path) -> None:
    # The signal must land while `up` is still starting components; on a machine where `up`
    # outran the poll, the cluster came up whole: take it down and try again.
    for _ in range(3):
        up = up_in_background(cluster_dir)
        state = wait_until_recorded(cluster_dir, "kube-apiserver")
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
        if up.returncode == 0 and "cluster is up" in output:
            assert cli(cluster_dir, "down").returncode == 0
            continue
        assert up.returncode == 130, output
        assert_nothing_left(cluster_dir, load_state(DevCluster(cluster_dir).paths) or state)
        return
    pytest.skip("`up` finished before SIGINT arrived three times: nothing to interrupt on this machine")


def test_down_after_up_was_killed_stops_everything(cluster_dir: Path) -> None:
    up = up_in_background(cluster_dir)
    wait_until_recorded(cluster_dir, "kube-apiserver")
    up.kill()  # no chance to clean up: the components run on in their own sessions
    up.wait(timeout=10)
    state = load_state(DevCluster(cluster_dir).paths)
    assert state is not None
    assert any(is_alive(p) for p in state.processes)
    assert cli(cluster_dir, "down").returncode == 0
    assert_nothing_left(cluster_dir, state)


def test_down_finds_processes_whose_state_file_was_lost(cluster_dir: Path) -> None:
    assert cli(cluster_dir, "up", "--gpu-nodes=1", "--cpu-nodes=0").returncode == 0
    paths = DevCluster(cluster_dir).paths
    state = load_state(paths)
    assert state is not None
    paths.state_file.unlink()
    status = cli(cluster_dir, "status")
    assert status.returncode == 1
    assert "stray processes" in status.stdout
    assert cli(cluster_dir, "down").returncode == 0
    # The data directory is only known from the state file; everything else must be gone.
    assert not [p for p in state.processes if is_alive(p)]
    assert not marked_processes(cluster_dir)
    assert not [port for port in state.ports.values() if port_in_use(port)]


def test_up_replaces_a_crashed_cluster(cluster_dir: Path) -> None:
    assert cli(cluster_dir, "up", "--gpu-nodes=1", "--cpu-nodes=0").returncode == 0
    old = load_state(DevCluster(cluster_dir).paths)
    assert old is not None
    kill_component(old, "kube-apiserver")
    status = cli(cluster_dir, "status")
    assert status.returncode == 1
    assert "not running" in status.stdout

    restarted = cli(cluster_dir, "up", "--gpu-nodes=1", "--cpu-nodes=0")
    assert restarted.returncode == 0, restarted.stderr
    assert not [p for p in old.processes if is_alive(p)], "the crashed cluster's processes were not stopped"
    assert not old.data_dir.exists()
    assert cli(cluster_dir, "status").returncode == 0


def test_up_restarts_an_exited_controller_manager_alone(cluster_dir: Path) -> None:
    assert cli(cluster_dir, "up", "--gpu-nodes=1", "--cpu-nodes=0").returncode == 0
    dev = DevCluster(cluster_dir)
    old = load_state(dev.paths)
    assert old is not None
    kcm = kill_component(old, "kube-controller-manager")
    assert cli(cluster_dir, "status").returncode == 1

    again = cli(cluster_dir, "up", "--gpu-nodes=1", "--cpu-nodes=0")
    assert again.returncode == 0, again.stderr
    assert "kube-controller-manager of the cluster" in again.stderr and "restarting it" in again.stderr
    new = load_state(dev.paths)
    assert new is not None
    # The rest of the cluster (its etcd, so its objects) is the same.
    kept = {p.name: p.pid for p in old.processes if p.name != "kube-controller-manager"}
    assert {p.name: p.pid for p in new.processes if p.name != "kube-controller-manager"} == kept
    restarted = next(p for p in new.processes if p.name == "kube-controller-manager")
    assert restarted.pid != kcm.pid and is_alive(restarted)
    assert cli(cluster_dir, "status").returncode == 0
    assert dev.heal() == []


def test_a_component_that_fails_to_start_is_reported_with_its_log(tmp_path: Path) -> None:
    real = locate_binaries()
    broken = tmp_path / "bin"
    broken.mkdir()
    for binary in real.iterdir():
        (broken / binary.name).symlink_to(binary)
    (broken / "kube-apiserver").unlink()
    (broken / "kube-apiserver").write_text(
        "#!/bin/sh\necho 'E0101 unknown flag: --bogus (a stand-in failure)' >&2\nexit 1\n"
    )
    (broken / "kube-apiserver").chmod(0o755)
    cluster_dir = tmp_path / "cluster"
    result = subprocess.run(
        [sys.executable, "-m", "coxswain", "dev", "cluster", "--dir", str(cluster_dir), "up"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COXSWAIN_BIN_DIR": str(broken)},
        check=False,
    )
    assert result.returncode == 1
    assert "kube-apiserver exited during start" in result.stderr
    assert "unknown flag: --bogus (a stand-in failure)" in result.stderr
    assert not marked_processes(cluster_dir.resolve()), "etcd was left running after the failed start"
