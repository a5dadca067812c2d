"""`DevCluster`: bring the local control plane up, report on it, tear it down.

One cluster per cluster directory (`$COXSWAIN_CLUSTER_DIR`, default
~/.cache/coxswain/cluster). A file lock serialises `up` and `down` on that directory, so two
test sessions starting at once end up sharing one cluster instead of racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from lightkube import Client
from pydantic import BaseModel

from coxswain.devcluster import components, kueue, processes, routes
from coxswain.devcluster.binaries import locate_binaries, locate_kueue
from coxswain.devcluster.bootstrap import (
    create_nodes,
    make_client,
    wait_for_default_service_account,
    wait_for_nodes_ready,
)
from coxswain.devcluster.health import log_tail, probe
from coxswain.devcluster.kubeconfig import write_kubeconfig
from coxswain.devcluster.kwok_nodes import STAGES_FILE, default_pools
from coxswain.devcluster.pki import CertPair, ClusterPKI, create_pki, pki_layout
from coxswain.devcluster.realnode import (
    apiserver_kubelet_client,
    check_prerequisites,
    create_cluster_objects,
    import_into_nodes,
    remove_real_nodes,
    start_cluster_services,
    start_real_nodes,
    wait_for_real_nodes,
)
from coxswain.devcluster.realnode_images import ImageError
from coxswain.devcluster.realnode_net import claim_bridge
from coxswain.devcluster.realnode_plan import RealNodesPlan, plan
from coxswain.devcluster.state import (
    ClusterPaths,
    ClusterState,
    clear_state,
    default_cluster_dir,
    load_state,
    save_state,
)

log = logging.getLogger("coxswain.devcluster")

# Components whose state is all in the API server: `up` restarts them alone when they exited.
RESTARTABLE = ("kube-controller-manager", "kube-scheduler", "kwok", "kueue")


class ClusterStartError(RuntimeError):
    """A component did not start or did not become healthy; the message carries its log tail."""


class ComponentStatus(BaseModel):
    name: str
    pid: int
    running: bool
    healthy: bool
    detail: str
    log: Path


class ClusterStatus(BaseModel):
    cluster_dir: Path
    recorded: bool
    healthy: bool
    components: list[ComponentStatus] = []
    api_server: str | None = None
    kubeconfig: Path | None = None
    stray_pids: list[int] = []


class DevCluster:
    """The local cluster living in one directory."""

    def __init__(self, cluster_dir: Path | None = None) -> None:
        self.paths = ClusterPaths((cluster_dir or default_cluster_dir()).resolve())

    # ---- locking -------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock (blocks while another process runs `up` or `down`)."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with self.paths.lock_file.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- status --------------------------------------------------------------------------

    def state(self) -> ClusterState | None:
        return load_state(self.paths)

    def status(self) -> ClusterStatus:
        state = self.state()
        stray = sorted(
            set(processes.marked_processes(self.paths.root))
            - {p.pid for p in (state.processes if state else [])}
        )
        if state is None:
            return ClusterStatus(cluster_dir=self.paths.root, recorded=False, healthy=False, stray_pids=stray)
        by_name = {c.name: c for c in self._components(state)}
        statuses: list[ComponentStatus] = []
        for record in state.processes:
            running = processes.is_alive(record)
            url = by_name[record.name].health_url if record.name in by_name else None
            healthy, detail = probe(url) if running and url else (running, "running" if running else "exited")
            statuses.append(
                ComponentStatus(
                    name=record.name,
                    pid=record.pid,
                    running=running,
                    healthy=healthy,
                    detail=detail,
                    log=record.log,
                )
            )
        expected = {c.name for c in self._components(state)}
        complete = expected <= {s.name for s in statuses}
        return ClusterStatus(
            cluster_dir=self.paths.root,
            recorded=True,
            healthy=state.ready and complete and all(s.healthy for s in statuses),
            components=statuses,
            api_server=state.api_server_url,
            kubeconfig=self.paths.kubeconfig,
            stray_pids=stray,
        )

    def is_healthy(self) -> bool:
        return self.status().healthy

    # ---- up ------------------------------------------------------------------------------

    def up(
        self,
        gpu_nodes: int = 2,
        cpu_nodes: int = 2,
        timeout: float = 120.0,
        real_nodes: int = 0,
        kueue: bool = False,
    ) -> ClusterState:
        """Start the cluster, or return the running one when it is healthy.

        A cluster that runs with other node counts is kept, with a warning: restarting it
        would pull it from under whoever uses it. Run `down` first to change the counts.
        `kueue` adds Kueue, to a running cluster too; a cluster with Kueue keeps it.
        """
        with self.locked():
            current = self.status()
            state = self.state()
            if current.healthy and state is not None:
                if (state.gpu_nodes, state.cpu_nodes, state.real_nodes) != (gpu_nodes, cpu_nodes, real_nodes):
                    log.warning(
                        "a cluster with %d GPU, %d CPU and %d real nodes is already up in %s; reusing it "
                        "(run `coxswain dev cluster down` first for other node counts)",
                        state.gpu_nodes,
                        state.cpu_nodes,
                        state.real_nodes,
                        self.paths.root,
                    )
                else:
                    log.info("cluster already up in %s; reusing it", self.paths.root)
                routes.hold(self.paths.root)
                if kueue and state.kueue_bin_dir is None:
                    self._start_kueue(state, time.monotonic() + timeout)
                return state
            if state is not None and state.ready and self._restart_exited(state, time.monotonic() + timeout):
                routes.hold(self.paths.root)
                if kueue and state.kueue_bin_dir is None:
                    self._start_kueue(state, time.monotonic() + timeout)
                return state
            if current.recorded or current.stray_pids:
                log.info("stopping what is left of a previous cluster in %s", self.paths.root)
                self._stop_everything(state)
            elif not current.recorded:
                # A `kill -9` of `up` can leave namespaces, mounts or cgroups without a record.
                remove_real_nodes(self.paths.root)
            return self._start(gpu_nodes, cpu_nodes, timeout, real_nodes, kueue)

    def _start_kueue(self, state: ClusterState, deadline: float) -> None:
        """CRDs first (Kueue's informers need them), then the manager, then its webhooks
        (they fail closed: registered before Kueue answers, they would refuse every Job)."""
        kueue_bin = locate_kueue()
        for name in kueue.PORT_NAMES:
            state.ports.setdefault(name, processes.free_port())
        client = make_client(self.paths.kubeconfig)
        kueue.install_crds(client, kueue_bin, self.paths, state.ports)
        kueue.prepare(self.paths, state.ports)
        state.kueue_bin_dir = kueue_bin
        try:
            self._launch(state, kueue.component(kueue_bin, self.paths, state.ports), deadline)
            kueue.install_webhooks(client, kueue_bin, self.paths, state.ports)
        except BaseException:
            state.kueue_bin_dir = None
            record = next((r for r in state.processes if r.name == "kueue"), None)
            if record is not None:
                processes.stop_groups([record.pid])
                state.processes.remove(record)
            save_state(self.paths, state)
            raise
        save_state(self.paths, state)

    def _start(
        self, gpu_nodes: int, cpu_nodes: int, timeout: float, real_nodes: int = 0, with_kueue: bool = False
    ) -> ClusterState:
        began = time.monotonic()
        bin_dir = locate_binaries()
        if real_nodes:
            check_prerequisites(bin_dir)
        paths = self.paths
        paths.make()
        for old_log in paths.logs_dir.glob("*.log"):
            old_log.unlink()
        ports = self._pick_ports()
        data_dir = Path(tempfile.mkdtemp(prefix="coxswain-etcd-"))
        state = ClusterState(
            cluster_dir=paths.root, bin_dir=bin_dir, data_dir=data_dir, ports=ports,
            gpu_nodes=gpu_nodes, cpu_nodes=cpu_nodes, real_nodes=real_nodes,
        )  # fmt: skip
        save_state(paths, state)
        deadline = time.monotonic() + timeout
        try:
            # Before any pod or node address exists: nothing aimed at them may leave the machine.
            routes.hold(paths.root)
            nodes: RealNodesPlan | None = None
            kubelet_client: CertPair | None = None
            if real_nodes:
                # Before the PKI: the API server's certificate names the bridge's address.
                nodes = claim_bridge(paths.root, real_nodes)
                state.node_slot = nodes.slot
                save_state(paths, state)
            pki = create_pki(paths.pki_dir, apiserver_ips=(nodes.gateway_ip,) if nodes else ())
            if nodes:
                kubelet_client = apiserver_kubelet_client(paths.pki_dir, pki.ca)
            self._launch(state, components.etcd(bin_dir, data_dir, ports), deadline)
            server = state.api_server_url
            write_kubeconfig(paths.kubeconfig, server, pki.ca.cert, pki.admin, "coxswain-admin")
            kcm_config = paths.run_dir / "kube-controller-manager.kubeconfig"
            write_kubeconfig(
                kcm_config, server, pki.ca.cert, pki.controller_manager, "system:kube-controller-manager"
            )
            scheduler_config = paths.run_dir / "kube-scheduler.kubeconfig"
            write_kubeconfig(scheduler_config, server, pki.ca.cert, pki.scheduler, "system:kube-scheduler")
            gateway = nodes.gateway_ip if nodes else None
            self._launch(
                state,
                components.kube_apiserver(bin_dir, pki, paths, ports, gateway, kubelet_client),
                deadline,
            )
            # The other three only need the API server: start them together, then wait.
            rest = [
                components.kube_controller_manager(bin_dir, pki, kcm_config, ports),
                components.kube_scheduler(bin_dir, scheduler_config, ports),
                components.kwok(bin_dir, paths.kubeconfig, STAGES_FILE, paths, ports),
            ]
            for component in rest:
                self._spawn(state, component)
            for component in rest:
                self._wait_healthy(state, component, deadline)
            client = make_client(paths.kubeconfig)
            names = create_nodes(client, default_pools(gpu_nodes, cpu_nodes))
            wait_for_default_service_account(client, max(deadline - time.monotonic(), 1.0))
            wait_for_nodes_ready(client, names, max(deadline - time.monotonic(), 1.0))
            if nodes:
                self._start_real_nodes(state, nodes, pki, client, deadline)
            if with_kueue:
                self._start_kueue(state, deadline)
        except BaseException:
            # Ctrl-C, a timeout or a failed component: leave nothing behind.
            log.error("cluster start failed; stopping what was started (logs stay in %s)", paths.logs_dir)
            self._stop_everything(self.state())
            raise
        state.ready = True
        save_state(paths, state)
        log.info(
            "cluster up in %.1f s: API server %s, %d GPU + %d CPU kwok nodes, %d real nodes, kubeconfig %s",
            time.monotonic() - began, state.api_server_url, gpu_nodes, cpu_nodes, real_nodes, paths.kubeconfig,
        )  # fmt: skip
        return state

    def _start_real_nodes(
        self, state: ClusterState, nodes: RealNodesPlan, pki: ClusterPKI, client: Client, deadline: float
    ) -> None:
        began = time.monotonic()

        def spawn(name: str, argv: list[str], env: dict[str, str]) -> None:
            self._spawn(state, components.Component(name=name, argv=argv, env=env))

        def alive(name: str) -> bool:
            return any(processes.is_alive(r) for r in state.processes if r.name == name)

        create_cluster_objects(client, nodes, self.paths.root / "nodes" / "storage")
        start_cluster_services(
            nodes,
            state.bin_dir,
            self.paths.kubeconfig,
            self.paths.run_dir,
            spawn,
            state.ports["coredns-health"],
        )
        start_real_nodes(
            nodes,
            state.bin_dir,
            pki,
            state.ports["apiserver"],
            self.paths.run_dir,
            spawn,
            alive,
            self.paths.logs_dir,
        )
        wait_for_real_nodes(client, nodes, max(deadline - time.monotonic(), 1.0), self.paths.logs_dir)
        log.info("%d real nodes Ready in %.1f s", len(nodes.nodes), time.monotonic() - began)

    def load_image(self, archive: Path, names: set[str] | None = None) -> list[str]:
        """Import an image archive into every real node (pods then use it without a pull); from
        an OCI layout directory, only the images (of `names`, or all) a node lacks."""
        nodes = self.real_nodes()
        if nodes is None:
            raise ImageError(f"the cluster in {self.paths.root} has no real nodes to load {archive} into")
        if not archive.exists():
            raise ImageError(f"no image archive or OCI layout directory at {archive}")
        began = time.monotonic()
        imported = import_into_nodes(nodes, archive, names)
        log.info(
            "imported %s from %s into %d real nodes in %.1f s",
            ", ".join(imported) or "nothing (all present)",
            archive,
            len(nodes.nodes),
            time.monotonic() - began,
        )
        return imported

    def real_nodes(self) -> RealNodesPlan | None:
        """The running cluster's real nodes, if it has any."""
        state = self.state()
        if state is None or not state.real_nodes or state.node_slot is None:
            return None
        return plan(self.paths.root, state.node_slot, state.real_nodes)

    @staticmethod
    def _pick_ports() -> dict[str, int]:
        ports: dict[str, int] = {}
        while len(set(ports.values())) < len(components.PORT_NAMES):
            ports = {name: processes.free_port() for name in components.PORT_NAMES}
        return ports

    def heal(self, timeout: float = 120.0) -> list[str]:
        """Restart exited stateless components of a running cluster (see `_restart_exited`);
        the names restarted. Nothing else is touched, whatever the cluster's state."""
        with self.locked():
            state = self.state()
            if state is None or not state.ready:
                return []
            return self._restart_exited(state, time.monotonic() + timeout)

    def _restart_exited(self, state: ClusterState, deadline: float) -> list[str]:
        """Restart the components that keep no state of their own (the controller manager,
        the scheduler, kwok, Kueue) when they alone have exited, as a kubelet restarts its
        static pods: the cluster, its objects and everyone's kubeconfig stay. Returns the names
        restarted: none when etcd or the API server is down (the cluster is then replaced)."""
        alive = {r.name for r in state.processes if processes.is_alive(r)}
        if not {"etcd", "kube-apiserver"} <= alive:
            return []
        specs = {c.name: c for c in self._components(state)}
        exited = [name for name in RESTARTABLE if name in specs and name not in alive]
        for name in exited:
            record = next((r for r in state.processes if r.name == name), None)
            log.warning(
                "%s of the cluster in %s had exited; restarting it (its last log lines: %s)",
                name,
                self.paths.root,
                record.log if record else "none",
            )
            if record is not None:
                state.processes.remove(record)
            self._launch(state, specs[name], deadline)
        return exited

    def _components(self, state: ClusterState) -> list[components.Component]:
        """The component specs for a recorded state (used for their health URLs)."""
        ports, bin_dir = state.ports, state.bin_dir
        pki = pki_layout(self.paths.pki_dir)
        run = self.paths.run_dir
        nodes = self.real_nodes()
        gateway = nodes.gateway_ip if nodes else None
        kubelet_client = CertPair(
            self.paths.pki_dir / "apiserver-kubelet-client.crt",
            self.paths.pki_dir / "apiserver-kubelet-client.key",
        )
        return [
            components.etcd(bin_dir, state.data_dir, ports),
            components.kube_apiserver(
                bin_dir, pki, self.paths, ports, gateway, kubelet_client if nodes else None
            ),
            components.kube_controller_manager(
                bin_dir, pki, run / "kube-controller-manager.kubeconfig", ports
            ),
            components.kube_scheduler(bin_dir, run / "kube-scheduler.kubeconfig", ports),
            components.kwok(bin_dir, self.paths.kubeconfig, STAGES_FILE, self.paths, ports),
        ] + ([kueue.component(state.kueue_bin_dir, self.paths, ports)] if state.kueue_bin_dir else [])

    def _spawn(self, state: ClusterState, component: components.Component) -> None:
        log.info("starting %s", component.name)
        record = processes.spawn(
            component.name, component.argv, component.log_path(self.paths), self.paths.root, component.env
        )
        state.processes.append(record)
        save_state(self.paths, state)

    def _launch(self, state: ClusterState, component: components.Component, deadline: float) -> None:
        self._spawn(state, component)
        self._wait_healthy(state, component, deadline)

    def _wait_healthy(self, state: ClusterState, component: components.Component, deadline: float) -> None:
        record = next(r for r in state.processes if r.name == component.name)
        detail = "not probed yet"
        while time.monotonic() < deadline:
            if not processes.is_alive(record):
                raise ClusterStartError(
                    f"{component.name} exited during start. Last lines of {record.log}:\n{log_tail(record.log)}"
                )
            if component.health_url is None:
                return
            healthy, detail = probe(component.health_url)
            if healthy:
                log.info("%s is healthy", component.name)
                return
            time.sleep(0.2)
        raise ClusterStartError(
            f"{component.name} did not become healthy in time ({component.health_url}: {detail}). "
            f"Last lines of {record.log}:\n{log_tail(record.log)}"
        )

    # ---- down ----------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop every process of this cluster and remove its data. Returns what was stopped."""
        with self.locked():
            return self._stop_everything(self.state())

    def _stop_everything(self, state: ClusterState | None) -> list[str]:
        stopped: list[str] = []
        # Clients of the API server first, then the API server, then etcd: an API server
        # whose etcd is gone spends its whole grace period retrying instead of exiting.
        tiers: list[set[int]] = [set(), set(), set()]
        tier_of = {"etcd": 2, "kube-apiserver": 1}
        if state is not None:
            for record in state.processes:
                if processes.is_alive(record):
                    tiers[tier_of.get(record.name, 0)].add(record.pid)  # each leads its own group
                    stopped.append(f"{record.name} (pid {record.pid})")
        # Processes whose record was lost (a crash between spawn and save, a deleted state
        # file) still carry the cluster directory in their environment; their program name
        # gives their tier.
        known = set().union(*tiers)
        for pid in processes.marked_processes(self.paths.root):
            pgid = processes.process_group_of(pid)
            if pgid is not None and pgid not in known:
                known.add(pgid)
                program = processes.program_name(pid)
                tiers[tier_of.get(program, 0)].add(pgid)
                stopped.append(f"stray {program} (pid {pid})")
        for tier in tiers:
            processes.stop_groups(tier)
        # Real nodes' containers, mounts, namespaces, links and cgroups, found by name.
        stopped += remove_real_nodes(self.paths.root)
        if state is not None:
            shutil.rmtree(state.data_dir, ignore_errors=True)
            self._check_ports_released(state)
        clear_state(self.paths)
        routes.release(self.paths.root)
        return stopped

    @staticmethod
    def _check_ports_released(state: ClusterState) -> None:
        busy = [f"{name}={port}" for name, port in state.ports.items() if processes.port_in_use(port)]
        if busy:
            log.warning(
                "ports still in use after stopping the cluster: %s (another program?)", ", ".join(busy)
            )

    # ---- env -----------------------------------------------------------------------------

    def env_exports(self) -> list[str]:
        """Shell lines that point kubectl, helm and the operator at this cluster."""
        state = self.state()
        bin_dir = state.bin_dir if state else locate_binaries()
        return [f"export KUBECONFIG={self.paths.kubeconfig}", f"export PATH={bin_dir}:$PATH"]

    # ---- test sessions sharing one cluster ----------------------------------------------

    def add_user(self) -> Path:
        """Record this process as a user of the cluster (see `other_users`)."""
        self.paths.users_dir.mkdir(parents=True, exist_ok=True)
        marker = self.paths.users_dir / str(os.getpid())
        marker.touch()
        return marker

    def other_users(self) -> list[int]:
        """PIDs of other live processes that registered with `add_user`."""
        pids: list[int] = []
        for marker in self.paths.users_dir.glob("*") if self.paths.users_dir.is_dir() else []:
            if not marker.name.isdigit() or int(marker.name) == os.getpid():
                continue
            if Path(f"/proc/{marker.name}").exists():
                pids.append(int(marker.name))
            else:
                marker.unlink(missing_ok=True)
        return pids
