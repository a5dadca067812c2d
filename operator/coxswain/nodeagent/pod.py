"""One pod on this node: its sandbox (network namespace, files), its containers' lives
(start, probes, restarts with back-off, termination) and the status the kubelet would report."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from coxswain.nodeagent import network, process, status
from coxswain.nodeagent.cgroups import MemoryCgroups
from coxswain.nodeagent.config import AgentConfig, image_entry
from coxswain.nodeagent.dns import PodAddress, resolv_conf
from coxswain.nodeagent.env import EnvError, build_env, cpu_threads, expand
from coxswain.nodeagent.probes import probe_loop
from coxswain.nodeagent.volumes import (
    Sources,
    VolumeError,
    container_mounts,
    prepare_volumes,
    unsupported_volumes,
)
from coxswain.quantity import parse_quantity

log = logging.getLogger(__name__)

BACKOFF_MAX_SECONDS = 300.0
RETRY_SECONDS = 5.0
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
UNSUPPORTED_REASON = "UnsupportedByNodeAgent"


class PodHost(Protocol):
    """What a pod needs from the agent."""

    cfg: AgentConfig
    addresses: network.AddressPool
    sources: Sources
    node_allocatable: dict[str, str]
    backoff_seconds: float
    cgroups: MemoryCgroups

    async def config_map_text(self, namespace: str, name: str) -> dict[str, str] | None: ...
    async def secret_text(self, namespace: str, name: str) -> dict[str, str] | None: ...
    async def patch_pod_status(self, namespace: str, name: str, uid: str, body: dict[str, Any]) -> None: ...
    def changed(self) -> None: ...
    def refresh_hosts(self) -> None: ...


def unsupported_features(pod: Mapping[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    problems = [f"volume {v}" for v in unsupported_volumes(pod)]
    for key in ("hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"spec.{key}")
    for c in spec.get("initContainers") or []:
        if c.get("restartPolicy") == "Always":
            problems.append(f"sidecar init container {c['name']} (restartPolicy Always)")
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        lifecycle = c.get("lifecycle") or {}
        for hook in ("postStart", "preStop"):
            if lifecycle.get(hook):
                problems.append(f"container {c['name']} lifecycle.{hook}")
    return problems


@dataclass
class Running:
    """A started container process."""

    proc: asyncio.subprocess.Process
    init_pid: int | None
    env: dict[str, str]
    started_at: str
    log_path: Path
    message_path: Path
    started_marker: Path
    liveness_failed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class PodRunner:
    def __init__(self, host: PodHost, pod: dict[str, Any]) -> None:
        self.host = host
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        key = f"{self.namespace}_{self.name}_{self.uid}"
        self.dir = host.cfg.pods_dir / key
        self.logs_dir = host.cfg.logs_dir / key
        self.netns, self.veth = network.sandbox_names(self.uid)
        self.ip: ipaddress.IPv4Address | None = None
        spec = pod.get("spec") or {}
        self.host_network = bool(spec.get("hostNetwork"))
        self.init = [
            status.ContainerRecord(c["name"], c.get("image", ""), init=True)
            for c in spec.get("initContainers") or []
        ]
        self.main = [
            status.ContainerRecord(c["name"], c.get("image", "")) for c in spec.get("containers") or []
        ]
        self.conditions = status.Conditions()
        self.failed_reason: tuple[str, str] | None = None
        self.start_time: str | None = None
        self.terminating = asyncio.Event()
        self.kill_deadline: float | None = None
        self.running: dict[str, Running] = {}
        self.sandbox_ready = False
        self.finished = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._hosts_text = ""
        self.report_owed = False

    # ---- what other pods and the agent see -------------------------------------------------
    def address(self) -> PodAddress | None:
        if self.ip is None or not self.sandbox_ready:
            return None
        spec = self.pod.get("spec") or {}
        return PodAddress(
            namespace=self.namespace,
            name=self.name,
            ip=str(self.ip),
            hostname=spec.get("hostname") or self.name,
            subdomain=spec.get("subdomain"),
            labels=dict(self.pod["metadata"].get("labels") or {}),
            ready=self._ready(),
        )

    def write_hosts(self, text: str) -> None:
        """Rewrite in place: the file is bind-mounted, a rename would not be seen by the pod."""
        if text == self._hosts_text or not self.sandbox_ready:
            return
        self._hosts_text = text
        with open(self.dir / "hosts", "w") as f:
            f.write(text)

    def state_record(self) -> dict[str, Any]:
        pids = []
        for r in self.running.values():
            pids.append(
                {"pid": r.proc.pid, "start": process.process_start_time(r.proc.pid), "init": r.init_pid}
            )
        return {"uid": self.uid, "netns": self.netns, "veth": self.veth, "processes": pids}

    def _save_state(self) -> None:
        (self.dir / "sandbox.json").write_text(json.dumps(self.state_record()))

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"pod {self.namespace}/{self.name}")

    def request_termination(self, grace: float) -> None:
        """SIGTERM now, SIGKILL after `grace` seconds (never later than an earlier deadline)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace, 0.0)
        if self.kill_deadline is not None and self.kill_deadline <= deadline and self.terminating.is_set():
            return
        self.kill_deadline = deadline
        first = not self.terminating.is_set()
        self.terminating.set()
        if first:
            log.info(
                "pod %s/%s: stopping its containers (SIGTERM, SIGKILL after %.0f s)",
                self.namespace,
                self.name,
                grace,
            )
        for name, r in self.running.items():
            self._stop_container(name, r, deadline)

    def _stop_container(self, name: str, r: Running, deadline: float) -> None:
        process.signal_pid(r.init_pid, signal.SIGTERM)

        async def kill_later() -> None:
            await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
            if r.proc.returncode is None:
                log.info(
                    "pod %s/%s: container %s outlived its grace period: SIGKILL",
                    self.namespace,
                    self.name,
                    name,
                )
                process.signal_pid(r.init_pid, signal.SIGKILL)
                process.signal_pid(r.proc.pid, signal.SIGKILL)

        r.tasks.append(asyncio.create_task(kill_later()))

    async def _run(self) -> None:
        try:
            problems = unsupported_features(self.pod)
            if problems:
                self._fail(
                    UNSUPPORTED_REASON, "the coxswain node agent cannot run this pod: " + "; ".join(problems)
                )
                log.warning("pod %s/%s: %s", self.namespace, self.name, self.failed_reason)
                await self.report()
                return
            await self._make_sandbox()
            self.start_time = status.now()
            await self.report()
            volumes = await self._volumes_when_ready()
            if volumes is None:
                return
            policy = (self.pod.get("spec") or {}).get("restartPolicy") or "Always"
            specs = {c["name"]: c for c in (self.pod.get("spec") or {}).get("initContainers") or []}
            for rec in self.init:
                await self._container_life(
                    rec, specs[rec.name], volumes, "Never" if policy == "Never" else "OnFailure"
                )
                if rec.exit_code() != 0 or self.terminating.is_set():
                    break
            if all(r.done and r.exit_code() == 0 for r in self.init) and not self.terminating.is_set():
                specs = {c["name"]: c for c in (self.pod.get("spec") or {}).get("containers") or []}
                await asyncio.gather(
                    *(self._container_life(rec, specs[rec.name], volumes, policy) for rec in self.main)
                )
        except Exception as e:  # a bug or an environment problem must show on the pod, not vanish
            log.exception("pod %s/%s: the node agent failed to run it", self.namespace, self.name)
            self._fail("NodeAgentError", f"the coxswain node agent failed to run this pod: {e}")
        finally:
            await self._stop_all()
            for rec in [*self.init, *self.main]:
                rec.ready = False
                if "terminated" not in rec.state and not self.failed_reason:
                    # Never started (deleted while pending, or the agent stopped first).
                    rec.state = status.terminated_state(
                        137, None, "the container never started", "ContainerStatusUnknown"
                    )
                rec.done = True
            try:
                await self.report()
            except Exception:
                log.exception("pod %s/%s: could not report its final status", self.namespace, self.name)
            await self.teardown()
            self.finished.set()

    async def _volumes_when_ready(self) -> dict[str, tuple[Path, bool]] | None:
        # Like the kubelet: a missing ConfigMap/Secret/claim keeps the pod Pending and is retried.
        while True:
            try:
                return await prepare_volumes(self.pod, self.dir, self.host.sources)
            except VolumeError as e:
                for rec in [*self.init, *self.main]:
                    rec.state = {"waiting": {"reason": "ContainerCreating", "message": str(e)}}
                log.warning(
                    "pod %s/%s: %s (retrying every %.0f s)", self.namespace, self.name, e, RETRY_SECONDS
                )
                await self.report()
            if await self._wait_terminating(RETRY_SECONDS):
                return None

    async def _wait_terminating(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.terminating.wait(), seconds)
            return True
        except TimeoutError:
            return False

    def _fail(self, reason: str, message: str) -> None:
        self.failed_reason = (reason, message)

    async def _make_sandbox(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.host_network:
            self.ip = self.host.cfg.gateway
        else:
            self.ip = self.host.addresses.take()
            self._save_state()
            net = self.host.cfg.network
            await network.create_sandbox(
                self.netns, self.veth, self.ip, net.prefixlen, self.host.cfg.gateway, self.host.cfg.bridge
            )
        (self.dir / "resolv.conf").write_text(resolv_conf(self.namespace))
        (self.dir / "hosts").write_text("")
        self.sandbox_ready = True
        # Before any container starts: its own name and the names known so far must resolve.
        self.host.refresh_hosts()

    async def teardown(self) -> None:
        """Free the address and the network namespace; keep the logs."""
        if self.ip is not None and not self.host_network:
            await network.delete_sandbox(self.netns, self.veth)
            self.host.addresses.give_back(self.ip)
        self.sandbox_ready = False
        shutil.rmtree(self.dir, ignore_errors=True)
        self.host.changed()

    async def _stop_all(self) -> None:
        deadline = asyncio.get_running_loop().time()
        for name, r in list(self.running.items()):
            self._stop_container(name, r, deadline)
        for r in list(self.running.values()):
            await r.proc.wait()

    # ---- one container ----------------------------------------------------------------------
    async def _container_life(
        self,
        rec: status.ContainerRecord,
        spec: dict[str, Any],
        volumes: dict[str, tuple[Path, bool]],
        policy: str,
    ) -> None:
        backoff = self.host.backoff_seconds
        while not self.terminating.is_set():
            code = await self._run_container_once(rec, spec, volumes)
            if code is None:  # could not be configured: retried by the loop, as the kubelet does
                if await self._wait_terminating(RETRY_SECONDS):
                    break
                continue
            if self.terminating.is_set() or policy == "Never" or (policy == "OnFailure" and code == 0):
                break
            rec.last_state = rec.state
            rec.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {backoff:.0f}s restarting failed container={rec.name} pod={self.name}",
                }
            }
            await self.report()
            if await self._wait_terminating(backoff):
                rec.state = rec.last_state
                break
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            rec.restart_count += 1
        rec.done = True
        await self.report()

    def _argv(self, spec: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
        entry = image_entry(spec.get("image", ""))
        command = spec.get("command") or (list(entry.default_command) if entry else [])
        args = spec.get("args") or []
        return [expand(a, env) for a in [*command, *args]]

    async def _container_env(self, spec: Mapping[str, Any]) -> dict[str, str]:
        cfg = self.host.cfg
        pod_spec = self.pod.get("spec") or {}
        # What an image's ENV would give: our venv first on PATH, so its programs stand in.
        base = {
            "PATH": f"{cfg.venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "HOSTNAME": pod_spec.get("hostname") or self.name,
        }
        pod_view = {**self.pod, "status": {**(self.pod.get("status") or {}), **self._ip_status()}}
        own = await build_env(
            pod_view, spec, self.host.node_allocatable, self.host.config_map_text, self.host.secret_text
        )
        env = {**base, **own}
        threads = cpu_threads(spec)
        if threads is not None and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(threads)
        return env

    async def _run_container_once(
        self, rec: status.ContainerRecord, spec: dict[str, Any], volumes: dict[str, tuple[Path, bool]]
    ) -> int | None:
        cdir = self.dir / "containers" / rec.name
        cdir.mkdir(parents=True, exist_ok=True)
        try:
            env = await self._container_env(spec)
            mounts = container_mounts(spec, volumes, env)
        except (EnvError, VolumeError, ValueError) as e:
            rec.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            log.warning("pod %s/%s container %s: %s", self.namespace, self.name, rec.name, e)
            await self.report()
            return None
        message_path = cdir / "termination-log"
        message_path.write_bytes(b"")
        targets = {m.target for m in mounts}
        for target, source in (
            ("/etc/hosts", self.dir / "hosts"),
            ("/etc/resolv.conf", self.dir / "resolv.conf"),
            (spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH, message_path),
        ):
            if target not in targets:
                mounts.append(process.Mount(source, target))
        argv = self._argv(spec, env)
        log_path = self.logs_dir / rec.name / f"{rec.restart_count}.log"
        started_marker = cdir / "started"
        started_marker.unlink(missing_ok=True)
        if not argv:
            rec.state = status.terminated_state(
                process.START_ERROR_EXIT,
                None,
                f"image {spec.get('image')!r} has no entry point known to the node agent: give the container a command",
                "StartError",
            )
            await self.report()
            return process.START_ERROR_EXIT
        hostname = (self.pod.get("spec") or {}).get("hostname") or self.name
        script = process.setup_script(
            mounts,
            hostname,
            spec.get("workingDir"),
            started_marker,
            cdir / "staging",
            read_only_root=bool((spec.get("securityContext") or {}).get("readOnlyRootFilesystem")),
            software=process.SOFTWARE_DIRS,
        )
        cgroup = self.host.cgroups.create(
            f"{self.uid[:8]}-{rec.name}-{rec.restart_count}", _memory_limit(spec)
        )
        proc = await process.spawn(
            None if self.host_network else self.netns, script, argv, env, log_path, cgroup
        )
        init_pid = await process.container_init_pid(proc)
        started_at = status.now()
        r = Running(proc, init_pid, env, started_at, log_path, message_path, started_marker)
        self.running[rec.name] = r
        self._save_state()
        rec.container_id = f"coxswain-agent://{self.uid[:8]}-{rec.name}-{rec.restart_count}"
        rec.state = {"running": {"startedAt": started_at}}
        rec.started = spec.get("startupProbe") is None
        rec.ready = spec.get("readinessProbe") is None and not rec.init
        log.info(
            "pod %s/%s: container %s started (pid %s): %s",
            self.namespace,
            self.name,
            rec.name,
            init_pid,
            " ".join(argv).replace("\n", " ")[:200],
        )
        if self.terminating.is_set() and self.kill_deadline is not None:
            self._stop_container(rec.name, r, self.kill_deadline)
        self._start_probes(rec, spec, r)
        await self.report()
        waiter = asyncio.create_task(proc.wait())
        liveness = asyncio.create_task(r.liveness_failed.wait())
        await asyncio.wait({waiter, liveness}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            grace = float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 30)
            log.info(
                "pod %s/%s: container %s failed its liveness or startup probe: restarting it",
                self.namespace,
                self.name,
                rec.name,
            )
            self._stop_container(rec.name, r, asyncio.get_running_loop().time() + grace)
            await waiter
        liveness.cancel()
        for t in r.tasks:
            t.cancel()
        del self.running[rec.name]
        self._save_state()
        assert proc.returncode is not None
        code = process.exit_code(proc.returncode)
        # Like containerd: any OOM kill in the container's cgroup makes a failure OOMKilled.
        oom = code != 0 and MemoryCgroups.oom_killed(cgroup)
        MemoryCgroups.remove(cgroup)
        started = started_marker.exists() and started_marker.read_bytes().strip() == b"started"
        tail = _tail(log_path)
        if not started:
            lines = [
                line
                for line in tail.decode(errors="replace").splitlines()
                if process.START_ERROR_PREFIX in line
            ]
            msg = (
                lines[-1].split(process.START_ERROR_PREFIX, 1)[1].strip()
                if lines
                else "the container did not start"
            )
            rec.state = status.terminated_state(code, started_at, msg, "StartError", rec.container_id)
        else:
            msg = status.termination_message(
                message_path.read_bytes(), spec.get("terminationMessagePolicy"), code, tail
            )
            rec.state = status.terminated_state(
                code, started_at, msg, "OOMKilled" if oom else None, rec.container_id
            )
        rec.ready = False
        log.info("pod %s/%s: container %s exited with %d", self.namespace, self.name, rec.name, code)
        await self.report()
        return code

    def _start_probes(self, rec: status.ContainerRecord, spec: Mapping[str, Any], r: Running) -> None:
        if self.ip is None:
            return
        ip = str(self.ip)

        async def run_exec(argv: Sequence[str], seconds: float) -> int:
            return await process.exec_in(r.init_pid, argv, r.env, seconds)

        def readiness(ok: bool, message: str) -> None:
            if rec.ready != ok:
                rec.ready = ok
                self.host.changed()
                r.tasks.append(asyncio.get_running_loop().create_task(self.report()))

        def liveness(ok: bool, message: str) -> None:
            if not ok:
                log.info(
                    "pod %s/%s: container %s is unhealthy: %s", self.namespace, self.name, rec.name, message
                )
                r.liveness_failed.set()

        async def after_startup() -> None:
            startup = spec.get("startupProbe")
            if startup is not None:
                done = asyncio.Event()

                def on_startup(ok: bool, message: str) -> None:
                    if ok:
                        done.set()
                    else:
                        liveness(False, message)

                await probe_loop(startup, spec, ip, run_exec, on_startup, stop_on_success=True)
                rec.started = True
                await self.report()
            more = []
            if spec.get("readinessProbe") is not None:
                more.append(probe_loop(spec["readinessProbe"], spec, ip, run_exec, readiness))
            if spec.get("livenessProbe") is not None:
                more.append(probe_loop(spec["livenessProbe"], spec, ip, run_exec, liveness))
            await asyncio.gather(*more)

        r.tasks.append(asyncio.create_task(after_startup()))

    # ---- status -------------------------------------------------------------------------------
    def _ready(self) -> bool:
        return bool(self.main) and all(c.ready for c in self.main) and not self.terminating.is_set()

    def _ip_status(self) -> dict[str, Any]:
        if self.ip is None:
            return {}
        gw = str(self.host.cfg.gateway)
        return {
            "podIP": str(self.ip),
            "podIPs": [{"ip": str(self.ip)}],
            "hostIP": gw,
            "hostIPs": [{"ip": gw}],
        }

    def phase(self) -> str:
        return status.pod_phase(self.init, self.main, self.failed_reason is not None)

    def build_status(self) -> dict[str, Any]:
        phase = self.phase()
        initialized = all(c.done and c.exit_code() == 0 for c in self.init)
        containers_ready = self._ready() and phase == "Running"
        self.conditions.set(
            "PodReadyToStartContainers", self.sandbox_ready or phase in ("Succeeded", "Failed")
        )
        self.conditions.set("Initialized", initialized, None if initialized else "ContainersNotInitialized")
        self.conditions.set(
            "ContainersReady", containers_ready, None if containers_ready else "ContainersNotReady"
        )
        self.conditions.set("Ready", containers_ready, None if containers_ready else "ContainersNotReady")
        out: dict[str, Any] = {
            "phase": phase,
            "conditions": self.conditions.to_list(),
            "containerStatuses": [c.to_status() for c in self.main],
            **self._ip_status(),
        }
        if self.init:
            out["initContainerStatuses"] = [c.to_status() for c in self.init]
        if self.start_time:
            out["startTime"] = self.start_time
        if self.failed_reason:
            out["reason"], out["message"] = self.failed_reason
        return out

    async def report(self) -> None:
        """Send the status; on an API error keep it owed: the agent's sync loop sends it again
        (status is rebuilt from the current state, so a late report loses nothing)."""
        try:
            await self.host.patch_pod_status(self.namespace, self.name, self.uid, self.build_status())
            self.report_owed = False
        except Exception as e:  # the API server restarting must not kill the pod's runner
            if not self.report_owed:
                log.warning(
                    "pod %s/%s: status not sent (%s); the agent retries", self.namespace, self.name, e
                )
            self.report_owed = True


def _memory_limit(spec: Mapping[str, Any]) -> int | None:
    limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
    return None if limit is None else int(parse_quantity(limit))


def _tail(path: Path, size: int = 16384) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read()
    except OSError:
        return b""
