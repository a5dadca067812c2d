"""The agent: registers the Node, keeps its Lease, runs the pods bound to it, keeps every
pod's /etc/hosts current, and on stop leaves nothing behind (processes, namespaces, veths).

Level-triggered like the kubelet's sync loop: watches on pods (of this node) and Services
only wake the loop, which lists what is there and makes the local state match it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx2
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.models.authentication_v1 import TokenRequest, TokenRequestSpec
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import (
    ConfigMap,
    Node,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    Secret,
    Service,
    ServiceAccount,
)
from lightkube.types import OnErrorAction, OnErrorResult, PatchType

from coxswain.nodeagent import network, node, process
from coxswain.nodeagent.cgroups import MemoryCgroups
from coxswain.nodeagent.config import AgentConfig
from coxswain.nodeagent.dns import host_entries, hosts_file
from coxswain.nodeagent.kubelet_api import KubeletApi
from coxswain.nodeagent.pod import PodRunner
from coxswain.nodeagent.volumes import Sources, decode_secret

log = logging.getLogger(__name__)

FIELD_MANAGER = "coxswain-node-agent"
RESYNC_SECONDS = 5.0
TERMINAL = ("Succeeded", "Failed")


class AgentError(RuntimeError):
    """The agent cannot start (another agent holds the node, no root, no `ip`)."""


def _directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _retry(e: Exception, count: int) -> OnErrorResult:
    return OnErrorResult(OnErrorAction.RETRY, sleep=min(5.0, 0.5 * count))


class Agent:
    def __init__(self, cfg: AgentConfig, backoff_seconds: float = 10.0) -> None:
        self.cfg = cfg
        self.backoff_seconds = backoff_seconds
        self.addresses = network.AddressPool(cfg.network)
        self.node_allocatable = node.capacity(cfg)
        self.sources = Sources(
            config_maps=self._config_map_bytes,
            secrets=self._secret_bytes,
            claim_path=self._claim_path,
            token=self._token,
        )
        self.client = AsyncClient(
            config=KubeConfig.from_file(str(cfg.kubeconfig)),
            field_manager=FIELD_MANAGER,
            timeout=httpx2.Timeout(30.0),
        )
        self.pods: dict[str, PodRunner] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._services: list[dict[str, Any]] = []
        self._started_at = node.micro_now()[:19] + "Z"
        self.cgroups = MemoryCgroups(cfg.node_name)

    # ---- PodHost ------------------------------------------------------------------------------
    def changed(self) -> None:
        self._wake.set()

    async def _get(self, kind: Any, namespace: str, name: str) -> Any | None:
        try:
            return await self.client.get(kind, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise

    async def config_map_text(self, namespace: str, name: str) -> dict[str, str] | None:
        cm = await self._get(ConfigMap, namespace, name)
        return None if cm is None else dict(cm.data or {})

    async def secret_text(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = await self._get(Secret, namespace, name)
        if secret is None:
            return None
        return {k: v.decode(errors="replace") for k, v in decode_secret(secret.data).items()}

    async def _config_map_bytes(self, namespace: str, name: str) -> dict[str, bytes] | None:
        cm = await self._get(ConfigMap, namespace, name)
        if cm is None:
            return None
        out = {k: v.encode() for k, v in (cm.data or {}).items()}
        out.update(decode_secret(cm.binaryData))
        return out

    async def _secret_bytes(self, namespace: str, name: str) -> dict[str, bytes] | None:
        secret = await self._get(Secret, namespace, name)
        return None if secret is None else decode_secret(secret.data)

    async def _claim_path(self, namespace: str, claim: str) -> Path:
        from coxswain.nodeagent.volumes import VolumeError

        pvc = await self._get(PersistentVolumeClaim, namespace, claim)
        if pvc is None:
            raise VolumeError(f"PersistentVolumeClaim {namespace}/{claim} not found")
        volume_name = pvc.spec.volumeName if pvc.spec else None
        if volume_name:
            pv = await self.client.get(PersistentVolume, volume_name)
            if pv.spec and pv.spec.hostPath is not None:
                return _directory(Path(pv.spec.hostPath.path))
            if pv.spec and pv.spec.local is not None:
                return Path(pv.spec.local.path)
        return _directory(self.cfg.volumes_dir / namespace / claim)

    async def _token(self, namespace: str, service_account: str, seconds: int, audiences: list[str]) -> str:
        request = TokenRequest(spec=TokenRequestSpec(audiences=audiences, expirationSeconds=seconds))
        answer = await self.client.create(ServiceAccount.Token, service_account, request, namespace=namespace)  # type: ignore[call-overload]
        return str(answer.status.token)

    async def patch_pod_status(self, namespace: str, name: str, uid: str, body: dict[str, Any]) -> None:
        try:
            await self.client.patch(
                Pod.Status,
                name,
                {"metadata": {"uid": uid}, "status": body},
                namespace=namespace,
                patch_type=PatchType.STRATEGIC,
            )
        except ApiError as e:
            # Gone (deleted, or a new pod of the same name: the uid precondition refuses it).
            if e.status.code not in (404, 409, 422):
                raise

    def _running(self, namespace: str, pod: str, container: str) -> bool:
        return any(
            r.namespace == namespace and r.name == pod and container in r.running for r in self.pods.values()
        )

    # ---- start and stop -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            await clean_leftovers(self.cfg)
            self.cgroups.remove_all()
            # Logs outlive their pods until the next start, for post-mortems (`coxswain logs`).
            shutil.rmtree(self.cfg.logs_dir, ignore_errors=True)
            await network.ensure_bridge(self.cfg.bridge, self.cfg.gateway, self.cfg.network.prefixlen)
            kubelet_api = KubeletApi(
                self.cfg.data_dir, str(self.cfg.gateway), self.cfg.node_name, self._running
            )
            try:
                await kubelet_api.start()
                node_uid = await self._register()
                log.info(
                    "node %s is Ready: pods %s, bridge %s at %s; data in %s",
                    self.cfg.node_name,
                    self.cfg.pod_cidr,
                    self.cfg.bridge,
                    self.cfg.gateway,
                    self.cfg.data_dir,
                )
                tasks: list[asyncio.Task[Any]] = [
                    asyncio.create_task(self._heartbeat(node_uid)),
                    asyncio.create_task(self._watch(Pod, {"spec.nodeName": self.cfg.node_name})),
                    asyncio.create_task(self._watch(Service, None)),
                    asyncio.create_task(self._sync_loop()),
                ]
                stopper: asyncio.Task[Any] = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for t in tasks:
                    t.cancel()
                for t in done:
                    if t is not stopper and not t.cancelled() and t.exception() is not None:
                        log.error("the agent failed: %s", t.exception())
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await kubelet_api.stop()
                await self._shutdown()

    @contextlib.contextmanager
    def _lock(self) -> Any:
        import fcntl

        path = self.cfg.data_dir / "agent.lock"
        with open(path, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AgentError(
                    f"another node agent runs node {self.cfg.node_name} (lock {path}); stop it or pick another --node-name"
                ) from None
            f.write(str(os.getpid()))
            f.flush()
            yield

    async def _register(self) -> str:
        manifest = node.node_manifest(self.cfg)
        try:
            created: Any = await self.client.create(from_dict(manifest))
        except ApiError as e:
            if e.status.code != 409:
                raise
            created = await self.client.patch(Node, self.cfg.node_name, manifest, patch_type=PatchType.MERGE)
        await self._patch_node_status(True)
        uid = str(created.metadata.uid if created.metadata else "")
        lease = node.lease_manifest(self.cfg, uid)
        try:
            await self.client.create(from_dict(lease))
        except ApiError as e:
            if e.status.code != 409:
                raise
            await self.client.patch(
                Lease, self.cfg.node_name, lease, namespace=node.LEASE_NAMESPACE, patch_type=PatchType.MERGE
            )
        return uid

    async def _patch_node_status(
        self, ready: bool, message: str = "the coxswain node agent is running pods"
    ) -> None:
        body = {"status": node.node_status(self.cfg, ready, message, self._started_at)}
        await self.client.patch(Node.Status, self.cfg.node_name, body, patch_type=PatchType.STRATEGIC)

    async def _heartbeat(self, node_uid: str) -> None:
        since_status = 0.0
        while True:
            await asyncio.sleep(node.RENEW_SECONDS)
            try:
                await self.client.patch(
                    Lease,
                    self.cfg.node_name,
                    {"spec": {"renewTime": node.micro_now(), "holderIdentity": self.cfg.node_name}},
                    namespace=node.LEASE_NAMESPACE,
                    patch_type=PatchType.MERGE,
                )
                since_status += node.RENEW_SECONDS
                if since_status >= node.STATUS_SECONDS:
                    since_status = 0.0
                    await self._patch_node_status(True)
            except (ApiError, httpx2.HTTPError) as e:
                log.warning("could not renew node %s's lease (%s); retrying", self.cfg.node_name, e)

    async def _watch(self, kind: Any, fields: dict[str, str] | None) -> None:
        async for _ in self.client.watch(kind, namespace=ALL_NS, fields=dict(fields or {}), on_error=_retry):
            self._wake.set()

    async def _sync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RESYNC_SECONDS)
            self._wake.clear()
            try:
                await self._sync()
            except (ApiError, httpx2.HTTPError) as e:
                log.warning("sync with the API server failed (%s); retrying", e)

    async def _sync(self) -> None:
        pods = [
            p.to_dict()
            async for p in self.client.list(
                Pod, namespace=ALL_NS, fields={"spec.nodeName": self.cfg.node_name}
            )
        ]
        self._services = [s.to_dict() async for s in self.client.list(Service, namespace=ALL_NS)]
        seen = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            runner = self.pods.get(uid)
            meta = pod["metadata"]
            if runner is None:
                phase = (pod.get("status") or {}).get("phase")
                if phase in TERMINAL:
                    if meta.get("deletionTimestamp"):
                        await self._final_delete(pod)
                    continue
                if (pod.get("status") or {}).get("startTime"):
                    # Started by an earlier agent whose processes are gone.
                    await self._fail_orphan(pod)
                    continue
                runner = PodRunner(self, pod)
                self.pods[uid] = runner
                log.info("pod %s/%s bound to this node: starting it", meta["namespace"], meta["name"])
                runner.start()
            else:
                runner.pod = pod
            if meta.get("deletionTimestamp"):
                grace = meta.get("deletionGracePeriodSeconds")
                runner.request_termination(float(30 if grace is None else grace))
                if runner.finished.is_set():
                    await self._final_delete(pod)
        for uid in list(self.pods):
            if uid not in seen:
                runner = self.pods.pop(uid)
                if not runner.finished.is_set():
                    log.info(
                        "pod %s/%s was removed from the API: killing its containers",
                        runner.namespace,
                        runner.name,
                    )
                    runner.request_termination(0)
                    await runner.finished.wait()
        self.refresh_hosts()
        for runner in list(self.pods.values()):
            if runner.report_owed:
                await runner.report()

    def refresh_hosts(self) -> None:
        addresses = [a for r in self.pods.values() if (a := r.address()) is not None]
        entries = host_entries(addresses, self._services)
        for r in self.pods.values():
            own = r.address()
            if own is not None:
                r.write_hosts(hosts_file(own, entries))

    async def _final_delete(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            await self.client.delete(Pod, meta["name"], namespace=meta["namespace"], grace_period=0)
        except ApiError as e:
            if e.status.code != 404:
                raise

    async def _fail_orphan(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        log.info(
            "pod %s/%s was started by an earlier agent run: marking it Failed",
            meta["namespace"],
            meta["name"],
        )
        await self.patch_pod_status(
            meta["namespace"],
            meta["name"],
            meta["uid"],
            {
                "phase": "Failed",
                "reason": "NodeAgentRestarted",
                "message": "the node agent restarted; its processes are gone",
            },
        )

    async def _shutdown(self) -> None:
        """Stop every pod (SIGTERM, then SIGKILL after a short grace), report them Failed as a
        kubelet does at node shutdown, then delete the Node and the bridge."""
        runners = [r for r in self.pods.values() if not r.finished.is_set()]
        if runners:
            log.info("stopping %d pod(s) on node %s", len(runners), self.cfg.node_name)
        for r in runners:
            grace = float((r.pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 30)
            r.failed_reason = ("Terminated", "the coxswain node agent stopped")
            r.conditions.set("DisruptionTarget", True, "TerminationByKubelet", "the node agent stopped")
            r.request_termination(min(grace, self.cfg.stop_grace_seconds))
        for r in runners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(r.finished.wait(), self.cfg.stop_grace_seconds + 15)
        await clean_leftovers(self.cfg)
        self.cgroups.remove_all()
        if self.cgroups.base is not None:
            with contextlib.suppress(OSError):
                self.cgroups.base.rmdir()
        await network.delete_link(self.cfg.bridge)
        with contextlib.suppress(ApiError, httpx2.HTTPError):
            await self.client.delete(Node, self.cfg.node_name)
        with contextlib.suppress(ApiError, httpx2.HTTPError):
            await self.client.delete(Lease, self.cfg.node_name, namespace=node.LEASE_NAMESPACE)
        await self.client.close()
        log.info("node agent for %s stopped: no process, namespace or veth of it is left", self.cfg.node_name)


async def clean_leftovers(cfg: AgentConfig) -> None:
    """Kill what an earlier run of this node's agent left (after a crash), free its namespaces."""
    for record_path in sorted(cfg.pods_dir.glob("*/sandbox.json")):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
        for p in record.get("processes", []):
            if p.get("start") and process.process_start_time(p["pid"]) == p["start"]:
                log.info("killing process %d left by an earlier run", p["pid"])
                process.signal_pid(p.get("init"), signal.SIGKILL)
                process.signal_pid(p["pid"], signal.SIGKILL)
        if record.get("netns"):
            await network.delete_sandbox(record["netns"], record["veth"])
        shutil.rmtree(record_path.parent, ignore_errors=True)
    if cfg.pods_dir.exists():
        shutil.rmtree(cfg.pods_dir, ignore_errors=True)
