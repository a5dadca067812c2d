"""`coxswain dev ...`: the local development cluster (and, later, the node agent and demo).

Sub-groups register themselves in `DEV_GROUPS` below; `coxswain dev agent` and
`coxswain dev demo` (issue 8) add one entry each.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from coxswain.cli.demo import register_demo


def register(sub: Any, name: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    groups = parser.add_subparsers(dest="dev_group", metavar="WHAT", required=True)
    for register_group in DEV_GROUPS:
        register_group(groups)


def _register_cluster(groups: Any) -> None:
    cluster: argparse.ArgumentParser = groups.add_parser(
        "cluster",
        help="a local control plane (etcd, apiserver, controller-manager, scheduler, kwok nodes)",
        description=(
            "A real Kubernetes control plane on 127.0.0.1 with fake kwok nodes. Its files live in "
            "$COXSWAIN_CLUSTER_DIR (default ~/.cache/coxswain/cluster); `eval $(coxswain dev cluster env)` "
            "points kubectl and helm at it."
        ),
    )
    cluster.add_argument(
        "--dir", type=Path, default=None, help="cluster directory (overrides $COXSWAIN_CLUSTER_DIR)"
    )
    actions = cluster.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser(
        "up", help="start the cluster (reuses a healthy one); builds the binaries if needed"
    )
    up.add_argument(
        "--gpu-nodes", type=int, default=2, help="kwok nodes with 4 nvidia.com/gpu each (default 2)"
    )
    up.add_argument("--cpu-nodes", type=int, default=2, help="kwok nodes without GPUs (default 2)")
    up.add_argument(
        "--real-nodes",
        type=int,
        default=0,
        help="real nodes (kubelet + containerd + kube-proxy, each in its own network namespace; "
        "needs root), 0-4 (default 0)",
    )
    up.add_argument(
        "--image",
        type=Path,
        action="append",
        default=[],
        metavar="ARCHIVE",
        help="image archive (OCI or docker tar) or OCI layout directory to import into every real node "
        "(repeatable)",
    )
    up.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)"
    )
    up.set_defaults(func=_up)
    actions.add_parser("down", help="stop every process of the cluster and delete its data").set_defaults(
        func=_down
    )
    load = actions.add_parser("load", help="import image archives into every real node's containerd")
    load.add_argument(
        "archives", type=Path, nargs="+", metavar="ARCHIVE", help="OCI/docker tar or OCI layout directory"
    )
    load.set_defaults(func=_load)
    actions.add_parser("status", help="say what runs; exit 0 only when healthy").set_defaults(func=_status)
    actions.add_parser("env", help="print `export KUBECONFIG=... PATH=...` for eval").set_defaults(func=_env)


def _register_agent(groups: Any) -> None:
    from coxswain.cli.dev_agent import register_agent

    register_agent(groups)


DEV_GROUPS: list[Callable[[Any], None]] = [_register_cluster, _register_agent, register_demo]


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # One line per HTTP request from the API client says nothing a user needs.
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM to `up` (a CI timeout, `kill`) gets the same clean-up as Ctrl-C.
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> int:
    from coxswain.devcluster import ClusterStartError, DevCluster
    from coxswain.devcluster.binaries import BinariesError
    from coxswain.devcluster.bootstrap import BootstrapError
    from coxswain.devcluster.realnode import RealNodeError
    from coxswain.devcluster.realnode_images import ImageError
    from coxswain.devcluster.realnode_net import NetworkError
    from coxswain.devcluster.realnode_plan import MAX_REAL_NODES

    _setup_logging()
    if args.gpu_nodes < 0 or args.cpu_nodes < 0:
        print("--gpu-nodes and --cpu-nodes must be >= 0", file=sys.stderr)
        return 2
    if not 0 <= args.real_nodes <= MAX_REAL_NODES:
        print(f"--real-nodes must be between 0 and {MAX_REAL_NODES}, got {args.real_nodes}", file=sys.stderr)
        return 2
    missing = [str(a) for a in args.image if not a.exists()]
    if missing:
        print(f"--image: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.image and not args.real_nodes:
        print("--image needs --real-nodes >= 1 (kwok nodes run no images)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    cluster = DevCluster(args.dir)
    try:
        cluster.up(
            gpu_nodes=args.gpu_nodes,
            cpu_nodes=args.cpu_nodes,
            timeout=args.timeout,
            real_nodes=args.real_nodes,
        )
        for archive in args.image:
            cluster.load_image(archive)
    except (ClusterStartError, BootstrapError, BinariesError, RealNodeError, ImageError, NetworkError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: everything that had started was stopped", file=sys.stderr)
        return 130
    print(
        f"cluster is up. Use it with:\n  eval $(coxswain dev cluster{_dir_flag(args)} env)", file=sys.stderr
    )
    return 0


def _load(args: argparse.Namespace) -> int:
    from coxswain.devcluster import DevCluster
    from coxswain.devcluster.realnode_images import ImageError

    _setup_logging()
    cluster = DevCluster(args.dir)
    if cluster.real_nodes() is None:
        print(
            f"the cluster in {cluster.paths.root} has no real nodes: `up --real-nodes 1` first",
            file=sys.stderr,
        )
        return 1
    try:
        for archive in args.archives:
            cluster.load_image(archive)
    except (ImageError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _dir_flag(args: argparse.Namespace) -> str:
    return f" --dir {args.dir}" if args.dir else ""


def _down(args: argparse.Namespace) -> int:
    from coxswain.devcluster import DevCluster

    _setup_logging()
    stopped = DevCluster(args.dir).down()
    print("stopped " + ", ".join(stopped) if stopped else "nothing was running", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    from coxswain.devcluster import DevCluster

    status = DevCluster(args.dir).status()
    if not status.recorded:
        print(f"no cluster in {status.cluster_dir}")
    else:
        print(f"cluster in {status.cluster_dir}: {'healthy' if status.healthy else 'NOT healthy'}")
        print(f"  API server  {status.api_server}\n  kubeconfig  {status.kubeconfig}")
        for c in status.components:
            state = "healthy" if c.healthy else ("running, not healthy" if c.running else "not running")
            detail = "" if c.healthy else f": {c.detail[:200]}"
            print(f"  {c.name:<24} pid {c.pid:<8} {state}{detail}  (log {c.log})")
    if status.stray_pids:
        print(
            f"  stray processes of this cluster: {status.stray_pids} (`coxswain dev cluster down` stops them)"
        )
    return 0 if status.healthy else 1


def _env(args: argparse.Namespace) -> int:
    from coxswain.devcluster import DevCluster

    print("\n".join(DevCluster(args.dir).env_exports()))
    return 0
