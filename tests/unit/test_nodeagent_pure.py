"""The node agent's pure parts: kubelet `$(VAR)` expansion, quantities, DNS entries,
image table, pod phase and termination messages, the setup script's order."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from coxswain.nodeagent.config import image_entry, image_repository
from coxswain.nodeagent.dns import PodAddress, host_entries, hosts_file
from coxswain.nodeagent.env import expand, field_value
from coxswain.nodeagent.process import Mount, setup_script
from coxswain.nodeagent.status import ContainerRecord, pod_phase, terminated_state, termination_message
from coxswain.quantity import parse_quantity

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$(A)-$(B)", "1-two"),
        ("$$(A)", "$(A)"),  # escaped
        ("$(MISSING)", "$(MISSING)"),  # unknown stays as written
        ("cost $5", "cost $5"),
        ("$(A", "$(A"),  # unterminated
        ("x$", "x$"),
    ],
)
def test_expand_follows_kubelet_rules(text: str, want: str) -> None:
    assert expand(text, {"A": "1", "B": "two"}) == want


def test_field_refs() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "namespace": "n",
            "annotations": {"batch.kubernetes.io/job-completion-index": "3"},
        },
        "spec": {"nodeName": "local-0"},
        "status": {"podIP": "10.245.0.2"},
    }
    assert field_value(pod, "metadata.annotations['batch.kubernetes.io/job-completion-index']") == "3"
    assert field_value(pod, "status.podIP") == "10.245.0.2"
    assert field_value(pod, "metadata.labels['absent']") == ""


@pytest.mark.parametrize(
    ("q", "v"), [("500m", "0.5"), ("2", "2"), ("1Gi", str(2**30)), ("1e3", "1000"), ("1.5k", "1500")]
)
def test_quantities(q: str, v: str) -> None:
    assert parse_quantity(q) == Decimal(v)


def test_image_table() -> None:
    assert image_repository("ghcr.io/coxswain-dev/trainer:0.1.0@sha256:ab") == "trainer"
    assert image_entry("ghcr.io/coxswain-dev/trainer:0.1.0") is not None
    assert image_entry("ghcr.io/coxswain-dev/server:0.1.0") is not None
    assert image_entry("busybox") is None


def test_dns_headless_subdomain_and_clusterip() -> None:
    pods = [
        PodAddress("ns", "job-0-x", "10.0.0.2", "job-0", "job", {"app": "t"}, ready=False),
        PodAddress("ns", "job-1-y", "10.0.0.3", "job-1", "job", {"app": "t"}, ready=True),
        PodAddress("other", "web-a", "10.0.0.4", "web-a", None, {"app": "web"}, ready=True),
    ]
    services = [
        {
            "metadata": {"namespace": "ns", "name": "job"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "t"}},
        },
        {
            "metadata": {"namespace": "other", "name": "web"},
            "spec": {"clusterIP": "10.1.0.9", "selector": {"app": "web"}},
        },
    ]
    entries = host_entries(pods, services)
    text = hosts_file(pods[0], entries)
    # Not-ready rank 0 resolves: the Service publishes not-ready addresses (torchrun needs it).
    assert "10.0.0.2\tjob-0.job.ns.svc.cluster.local job-0.job.ns.svc job-0.job.ns job-0.job" in text
    assert "10.0.0.3\tjob.ns.svc.cluster.local job.ns.svc job.ns job" in text
    # Another namespace's Service: qualified names only; a ClusterIP Service -> a ready pod.
    assert "10.0.0.4\tweb.other.svc.cluster.local web.other.svc web.other\n" in text
    # Without publishNotReadyAddresses only ready pods are published.
    services[0]["spec"]["publishNotReadyAddresses"] = False
    assert not [e for e in host_entries(pods, services) if e.ip == "10.0.0.2"]


def test_pod_phase_and_messages() -> None:
    done_ok = ContainerRecord("a", "i", state=terminated_state(0, None, ""), done=True)
    done_bad = ContainerRecord("b", "i", state=terminated_state(3, None, "boom"), done=True)
    waiting = ContainerRecord("c", "i")
    assert pod_phase([], [done_ok], failed=False) == "Succeeded"
    assert pod_phase([], [done_ok, done_bad], failed=False) == "Failed"
    assert pod_phase([], [waiting], failed=False) == "Pending"
    assert pod_phase([waiting], [done_ok], failed=False) == "Pending"
    assert terminated_state(137, None, "")["terminated"]["signal"] == 9
    assert termination_message(b"", "FallbackToLogsOnError", 1, b"a\nb\n") == "a\nb"
    assert termination_message(b"", "File", 1, b"a\n") == ""
    assert termination_message(b"x" * 5000, None, 0, b"") == "x" * 4096


def test_setup_script_stages_sources_then_mounts_parents_first() -> None:
    script = setup_script(
        [
            Mount(Path("/data/b"), "/a/b/c"),
            Mount(Path("/data/tmp"), "/tmp"),
            Mount(Path("/data/ro"), "/a", True),
        ],
        "host-0",
        "/work",
        Path("/state/started"),
        Path("/state/staging"),
    )
    lines = script.splitlines()
    stage = [i for i, line in enumerate(lines) if "/state/staging/" in line and "--bind /data" in line]
    targets = [line.split()[3] for line in lines if line.startswith("/usr/bin/mount --bind /state/staging/")]
    assert max(stage) < min(
        i for i, line in enumerate(lines) if line.startswith("/usr/bin/mount --bind /state/staging/")
    )
    assert targets == ["/a", "/tmp", "/a/b/c"]
    assert any("remount,bind,ro /a " in line for line in lines)
    assert lines[-1] == 'exec "$@"'
