"""The node agent runs real pods: commands, exit codes, termination messages, env and
volumes, pod networking and DNS, probes, restarts, deletion, and its own clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube import ApiError
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Pod

from agent_fixtures import AgentProcess, _netns, descendants
from cluster_fixtures import ClusterHandle, wait_for

pytestmark = pytest.mark.e2e


def apply(cluster: ClusterHandle, ns: str, *objs: dict[str, Any]) -> None:
    for obj in objs:
        cluster.client.create(from_dict(obj), namespace=ns)  # type: ignore[call-overload]


def pod(agent: AgentProcess, name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A pod pinned to the agent's node running `python -c script`."""
    container: dict[str, Any] = {"name": "main", "image": "python:3.11", "command": ["python", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
        "spec": {
            "nodeSelector": agent.selector,
            "automountServiceAccountToken": False,
            "restartPolicy": spec.pop("restartPolicy", "Never"),
            "containers": [container],
            **spec,
        },
    }


def pod_dict(cluster: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return cluster.client.get(Pod, name, namespace=ns).to_dict()


def wait_phase(
    cluster: ClusterHandle, ns: str, name: str, phases: tuple[str, ...], timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        p = pod_dict(cluster, ns, name)
        return p if p.get("status", {}).get("phase") in phases else None

    return wait_for(probe, timeout, f"pod {ns}/{name} in {phases}")


def terminated(p: dict[str, Any]) -> dict[str, Any]:
    return p["status"]["containerStatuses"][0]["state"]["terminated"]


def test_pod_runs_command_and_reports_exit_code_and_message(
    cluster: ClusterHandle, agent: AgentProcess, namespace: str
) -> None:
    apply(
        cluster,
        namespace,
        pod(agent, "ok", "print('hello from a pod')"),
        pod(agent, "bad", "open('/dev/termination-log', 'w').write('model diverged'); raise SystemExit(3)"),
        pod(
            agent,
            "fallback",
            "import sys; print('last words on stdout'); sys.exit(4)",
            container={"terminationMessagePolicy": "FallbackToLogsOnError"},
        ),
    )
    ok = wait_phase(cluster, namespace, "ok", ("Succeeded", "Failed"))
    assert ok["status"]["phase"] == "Succeeded"
    assert terminated(ok)["exitCode"] == 0 and terminated(ok)["reason"] == "Completed"
    assert ok["status"]["podIP"].startswith("10.245.")
    bad = wait_phase(cluster, namespace, "bad", ("Succeeded", "Failed"))
    assert bad["status"]["phase"] == "Failed"
    assert terminated(bad)["exitCode"] == 3 and terminated(bad)["reason"] == "Error"
    assert terminated(bad)["message"] == "model diverged"
    fallback = wait_phase(cluster, namespace, "fallback", ("Succeeded", "Failed"))
    assert terminated(fallback)["exitCode"] == 4
    assert "last words on stdout" in terminated(fallback)["message"]
    log = agent.log_file(namespace, "ok", "main")
    assert log is not None and log.read_text() == "hello from a pod\n"
    # `kubectl logs` works too: the API server proxies it to the agent's kubelet port.
    assert cluster.kubectl("-n", namespace, "logs", "ok").stdout == "hello from a pod\n"
    assert "last words" in cluster.kubectl("-n", namespace, "logs", "fallback", "--tail=1").stdout


def test_env_value_from_and_volumes_appear_at_their_paths(
    cluster: ClusterHandle, agent: AgentProcess, namespace: str, tmp_path: Path
) -> None:
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (host_dir / "from-host.txt").write_text("host file")
    claim_dir = tmp_path / "claim"
    pv = f"pv-{uuid.uuid4().hex[:8]}"
    cluster.client.create(
        from_dict(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "manual",
                    "hostPath": {"path": str(claim_dir), "type": "DirectoryOrCreate"},
                    "claimRef": {"namespace": namespace, "name": "data"},
                },
            }
        )
    )
    try:
        apply(
            cluster,
            namespace,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cfg"},
                "data": {"mode": "fast", "job.yaml": "a: 1\n"},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "key"},
                "stringData": {"token": "s3cret"},
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "manual",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        script = """
import json, os
def read(p):
    return open(p).read()
out = {k: os.environ.get(k) for k in ("POD_NAME", "POD_NS", "POD_IP", "NODE", "RANK", "MODE", "TOKEN", "CPUS", "OMP_NUM_THREADS", "WHO")}
out["cwd"] = os.getcwd()
out["config"] = read("/etc/app/job.yaml")
out["secret"] = read("/etc/key/token")
out["host"] = read("/mnt/host/from-host.txt")
open("/data/sub/written.txt", "w").write("on the claim")
try:
    open("/etc/app/x", "w")
    out["ro"] = False
except OSError:
    out["ro"] = True
open("/scratch/shared.txt", "w").write("scratch")
try:
    open("/var/coxswain-root-write-test", "w")
    out["root_ro"] = False
except OSError:
    out["root_ro"] = True
print(json.dumps(out))
"""
        apply(
            cluster,
            namespace,
            pod(
                agent,
                "envvol",
                script,
                container={
                    "workingDir": "/work/here",
                    "securityContext": {"readOnlyRootFilesystem": True},
                    "resources": {"limits": {"cpu": "2", "memory": "1Gi"}},
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['rank']"}}},
                        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "key", "key": "token"}}},
                        {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                        {"name": "WHO", "value": "$(POD_NAME)-in-$(POD_NS)"},
                    ],
                    "volumeMounts": [
                        {"name": "cfg", "mountPath": "/etc/app"},
                        {"name": "key", "mountPath": "/etc/key", "readOnly": True},
                        {"name": "host", "mountPath": "/mnt/host"},
                        {"name": "data", "mountPath": "/data/sub", "subPath": "one/two"},
                        {"name": "scratch", "mountPath": "/scratch"},
                    ],
                },
                labels={"app": "envvol", "rank": "7"},
                volumes=[
                    {"name": "cfg", "configMap": {"name": "cfg"}},
                    {"name": "key", "secret": {"secretName": "key"}},
                    {"name": "host", "hostPath": {"path": str(host_dir), "type": "Directory"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "scratch", "emptyDir": {}},
                ],
            ),
        )
        p = wait_phase(cluster, namespace, "envvol", ("Succeeded", "Failed"))
        log = agent.log_file(namespace, "envvol", "main")
        assert log is not None
        assert p["status"]["phase"] == "Succeeded", log.read_text()
        out = json.loads(log.read_text().strip().splitlines()[-1])
        assert out["POD_NAME"] == "envvol" and out["POD_NS"] == namespace and out["NODE"] == agent.node_name
        assert out["POD_IP"] == p["status"]["podIP"]
        assert out["RANK"] == "7" and out["MODE"] == "fast" and out["TOKEN"] == "s3cret"
        assert out["WHO"] == f"envvol-in-{namespace}"
        assert out["CPUS"] == "2" and out["OMP_NUM_THREADS"] == "2"
        assert out["cwd"] == "/work/here"
        assert out["config"] == "a: 1\n" and out["secret"] == "s3cret" and out["host"] == "host file"
        assert out["ro"] is True and out["root_ro"] is True
        assert not Path("/var/coxswain-root-write-test").exists()
        # The claim is the PV's hostPath; the subPath was made in it.
        assert (claim_dir / "one" / "two" / "written.txt").read_text() == "on the claim"
        # Nothing leaked onto the host's own paths: the mounts lived in the pod's namespace.
        assert not Path("/scratch/shared.txt").exists()
    finally:
        from lightkube.resources.core_v1 import PersistentVolume

        cluster.client.delete(PersistentVolume, pv)


SERVER = """
import http.server, os, socket, sys, time, urllib.request, threading, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = socket.gethostname().encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("0.0.0.0", 8080), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
peer = os.environ["PEER"]
seen = {}
for _ in range(100):
    try:
        seen["peer"] = urllib.request.urlopen(f"http://{peer}.peers:8080/", timeout=2).read().decode()
        seen["peer_ip"] = socket.gethostbyname(f"{peer}.peers")
        seen["fqdn"] = socket.gethostbyname(f"{peer}.peers.{os.environ['NS']}.svc.cluster.local")
        seen["service"] = sorted({a[4][0] for a in socket.getaddrinfo("peers", 8080, type=socket.SOCK_STREAM)})
        seen["front"] = urllib.request.urlopen("http://front:8080/", timeout=2).read().decode()
        break
    except OSError as e:
        seen["error"] = str(e)
        time.sleep(0.2)
print(json.dumps(seen), flush=True)
time.sleep(3)
"""


def test_two_pods_listen_on_one_port_and_reach_each_other_by_dns(
    cluster: ClusterHandle, agent: AgentProcess, namespace: str
) -> None:
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "peers"},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"app": "peer"},
                "ports": [{"port": 8080}],
            },
        },
        # A ClusterIP Service: its name resolves to one ready pod (no virtual IP here).
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "front"},
            "spec": {"selector": {"app": "peer"}, "ports": [{"port": 8080}]},
        },
    )
    for me, other in (("a", "b"), ("b", "a")):
        apply(
            cluster,
            namespace,
            pod(
                agent,
                f"peer-{me}",
                SERVER,
                labels={"app": "peer"},
                hostname=me,
                subdomain="peers",
                container={"env": [{"name": "PEER", "value": other}, {"name": "NS", "value": namespace}]},
            ),
        )
    results = {}
    for me in ("a", "b"):
        p = wait_phase(cluster, namespace, f"peer-{me}", ("Succeeded", "Failed"))
        log = agent.log_file(namespace, f"peer-{me}", "main")
        assert log is not None
        results[me] = (p["status"]["podIP"], json.loads(log.read_text().strip().splitlines()[-1]))
    (ip_a, seen_a), (ip_b, seen_b) = results["a"], results["b"]
    assert ip_a != ip_b
    assert seen_a["peer"] == "b" and seen_a["peer_ip"] == ip_b and seen_a["fqdn"] == ip_b, seen_a
    assert seen_b["peer"] == "a" and seen_b["peer_ip"] == ip_a, seen_b
    assert set(seen_a["service"]) == {ip_a, ip_b}
    assert seen_a["front"] in ("a", "b") and seen_b["front"] == seen_a["front"]


def test_readiness_probe_gates_ready(cluster: ClusterHandle, agent: AgentProcess, namespace: str) -> None:
    script = """
import http.server, time
start = time.monotonic()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path != "/ready" or time.monotonic() - start > 4
        self.send_response(200 if ok else 503); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""
    apply(
        cluster,
        namespace,
        pod(
            agent,
            "gated",
            script,
            restartPolicy="Always",
            container={
                "ports": [{"name": "http", "containerPort": 8000}],
                "readinessProbe": {
                    "httpGet": {"path": "/ready", "port": "http"},
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
            },
        ),
    )

    def conditions() -> dict[str, str]:
        p = pod_dict(cluster, namespace, "gated")
        return {c["type"]: c["status"] for c in p["status"].get("conditions") or []}

    p = wait_phase(cluster, namespace, "gated", ("Running",))
    assert conditions().get("Ready") == "False"
    assert p["status"]["containerStatuses"][0]["ready"] is False
    wait_for(lambda: conditions().get("Ready") == "True", 30, "Ready after the probe passes")
    # The host reaches the pod's IP directly, as the operator does for /progress.
    ip = pod_dict(cluster, namespace, "gated")["status"]["podIP"]
    assert httpx.get(f"http://{ip}:8000/ready", timeout=5).status_code == 200


def test_deleting_a_pod_sends_sigterm_then_removes_it(
    cluster: ClusterHandle, agent: AgentProcess, namespace: str
) -> None:
    polite = """
import signal, sys, time
def bye(*a):
    print("got SIGTERM, saving", flush=True); time.sleep(0.5); sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("up", flush=True)
time.sleep(600)
"""
    stubborn = """
import signal, time
signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
print("up", flush=True)
time.sleep(600)
"""
    apply(
        cluster,
        namespace,
        pod(agent, "polite", polite, terminationGracePeriodSeconds=30),
        pod(agent, "stubborn", stubborn, terminationGracePeriodSeconds=2),
    )
    for name in ("polite", "stubborn"):
        wait_phase(cluster, namespace, name, ("Running",))
        wait_for(
            lambda n=name: (
                "up" in (agent.log_file(namespace, n, "main") or Path("/nonexistent")).read_text()
                if agent.log_file(namespace, n, "main")
                else None
            ),
            30,
            f"{name} printing",
        )
    pids = {n: agent.container_pids(namespace, n) for n in ("polite", "stubborn")}
    assert all(pids.values())
    started = time.monotonic()
    cluster.client.delete(Pod, "polite", namespace=namespace)
    cluster.client.delete(Pod, "stubborn", namespace=namespace)

    def gone(name: str) -> bool:
        try:
            cluster.client.get(Pod, name, namespace=namespace)
            return False
        except ApiError as e:
            return e.status.code == 404

    wait_for(lambda: gone("polite"), 20, "polite pod removed")
    polite_took = time.monotonic() - started
    wait_for(lambda: gone("stubborn"), 20, "stubborn pod removed")
    stubborn_took = time.monotonic() - started
    assert polite_took < 10  # it exited on SIGTERM, long before its 30 s grace
    assert stubborn_took >= 2  # SIGKILL only after its 2 s grace
    assert "got SIGTERM, saving" in (agent.log_file(namespace, "polite", "main") or Path()).read_text()
    assert "ignoring SIGTERM" in (agent.log_file(namespace, "stubborn", "main") or Path()).read_text()
    for pid in [p for ps in pids.values() for p in ps]:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1]
        )


def test_on_failure_restarts_with_count_then_succeeds(
    cluster: ClusterHandle, agent: AgentProcess, namespace: str
) -> None:
    script = """
import os, sys
n = len(os.listdir("/state"))
open(f"/state/run-{n}", "w").close()
print("run", n, flush=True)
sys.exit(0 if n >= 2 else 1)
"""
    apply(
        cluster,
        namespace,
        pod(
            agent,
            "flaky",
            script,
            restartPolicy="OnFailure",
            container={"volumeMounts": [{"name": "state", "mountPath": "/state"}]},
            volumes=[{"name": "state", "emptyDir": {}}],
        ),
    )
    p = wait_phase(cluster, namespace, "flaky", ("Succeeded", "Failed"), timeout=60)
    status = p["status"]["containerStatuses"][0]
    assert p["status"]["phase"] == "Succeeded"
    assert status["restartCount"] == 2
    assert status["lastState"]["terminated"]["exitCode"] == 1


def test_memory_limit_is_enforced_and_an_oom_kill_reported(
    cluster: ClusterHandle, agent: AgentProcess, namespace: str
) -> None:
    from coxswain.nodeagent.cgroups import _own_memory_cgroup

    if _own_memory_cgroup() is None:
        pytest.skip("no cgroup v1 memory controller on this machine: the agent cannot enforce memory limits")
    apply(
        cluster,
        namespace,
        pod(
            agent,
            "hog",
            "b = b'x' * (512 * 1024 * 1024); print('survived')",
            container={"resources": {"limits": {"memory": "100Mi"}}},
        ),
    )
    p = wait_phase(cluster, namespace, "hog", ("Succeeded", "Failed"))
    assert p["status"]["phase"] == "Failed"
    assert terminated(p)["reason"] == "OOMKilled", terminated(p)
    # Killed by the kernel (137), or MemoryError when a large allocation is refused outright.
    assert terminated(p)["exitCode"] in (1, 137)


def test_unsupported_pod_fails_with_a_clear_reason(
    cluster: ClusterHandle, agent: AgentProcess, namespace: str
) -> None:
    apply(
        cluster,
        namespace,
        pod(
            agent, "nfs", "print(1)", volumes=[{"name": "share", "nfs": {"server": "10.9.9.9", "path": "/x"}}]
        ),
    )
    p = wait_phase(cluster, namespace, "nfs", ("Failed",))
    assert p["status"]["reason"] == "UnsupportedByNodeAgent"
    assert "nfs" in p["status"]["message"] and "share" in p["status"]["message"]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_agent_stop_leaves_no_process_namespace_or_veth(
    cluster: ClusterHandle, start_agent: Any, namespace: str, how: signal.Signals
) -> None:
    own: AgentProcess = start_agent()
    # A grandchild in a session of its own, as torchrun's workers are: it must go too.
    script = """
import subprocess, time
subprocess.Popen(["sleep", "600"], start_new_session=True)
print("started", flush=True)
time.sleep(600)
"""
    apply(
        cluster,
        namespace,
        pod(own, "sleeper", script, restartPolicy="Always", terminationGracePeriodSeconds=2),
    )
    wait_phase(cluster, namespace, "sleeper", ("Running",))
    wait_for(
        lambda: (
            len(descendants(own.container_pids(namespace, "sleeper")[0])) >= 1
            if own.container_pids(namespace, "sleeper")
            else None
        ),
        30,
        "the grandchild",
    )
    init = own.container_pids(namespace, "sleeper")
    tree = set(init) | {d for p in init for d in descendants(p)}
    assert own.proc is not None
    tree |= set(descendants(own.proc.pid))
    own.started_pids = tree
    netns = json.loads(((own.pod_dir(namespace, "sleeper") or Path()) / "sandbox.json").read_text())["netns"]
    assert netns in _netns()
    rc = own.stop(how)
    if how == signal.SIGTERM:
        assert rc == 0, own.log_tail()
        # Reported like a kubelet at node shutdown (unless already garbage-collected with the Node).
        if _exists(cluster, namespace, "sleeper"):
            assert pod_dict(cluster, namespace, "sleeper")["status"]["phase"] == "Failed"
    # SIGKILL: the parent-death signal chain takes the containers down with the agent.
    wait_for(
        lambda: not [pid for pid in tree if _running(pid)], 15, f"every process of the agent gone ({tree})"
    )
    if how == signal.SIGKILL:
        # A killed agent cannot remove its namespaces, bridge and Node; its next start does.
        own.start()
        own.stop()
    assert netns not in _netns()
    left = own.leftovers()
    assert not left, left


def _exists(cluster: ClusterHandle, ns: str, name: str) -> bool:
    try:
        cluster.client.get(Pod, name, namespace=ns)
        return True
    except ApiError:
        return False


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_liveness_failure_restarts_the_container_and_init_containers_run_first(
    cluster: ClusterHandle, agent: AgentProcess, namespace: str
) -> None:
    # Healthy for 2 s, then /healthz fails: the liveness probe must restart the container.
    script = """
import http.server, time
start = time.monotonic()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if time.monotonic() - start < 2 else 500); self.end_headers()
    def log_message(self, *a): pass
print(open("/shared/init.txt").read(), flush=True)
http.server.HTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""
    manifest = pod(
        agent,
        "sickly",
        script,
        restartPolicy="Always",
        terminationGracePeriodSeconds=1,
        container={
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": 8000},
                "periodSeconds": 1,
                "failureThreshold": 2,
            },
            "startupProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1, "failureThreshold": 30},
            "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
        },
        volumes=[{"name": "shared", "emptyDir": {}}],
    )
    manifest["spec"]["initContainers"] = [
        {
            "name": "prepare",
            "image": "busybox",
            "command": ["sh", "-c", "echo prepared by init > /shared/init.txt"],
            "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
        }
    ]
    apply(cluster, namespace, manifest)

    def restarted() -> dict[str, Any] | None:
        p = pod_dict(cluster, namespace, "sickly")
        statuses = p["status"].get("containerStatuses") or []
        return p if statuses and statuses[0]["restartCount"] >= 1 else None

    p = wait_for(restarted, 60, "a liveness restart")
    init = p["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 0
    assert p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] != 0
    # `coxswain logs` reads the agent's files: the current run and the one before it.
    for extra in ([], ["--previous"]):

        def logs(extra: list[str] = extra) -> str | None:
            out = subprocess.run(
                [sys.executable, "-m", "coxswain", "logs", "sickly", "-n", namespace, "-c", "main", *extra],
                capture_output=True,
                text=True,
                env={**cluster.env(), "COXSWAIN_AGENT_DIR": str(agent.data_dir.parent)},
                check=True,
            ).stdout
            return out if "prepared by init" in out else None

        wait_for(logs, 20, f"`coxswain logs {' '.join(extra)}` showing the container's output")
