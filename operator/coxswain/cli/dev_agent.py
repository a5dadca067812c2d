"""`coxswain dev agent`: run the local node agent in the foreground (Ctrl-C stops it and
everything it started). Registered into `coxswain dev` by cli/dev.py's DEV_GROUPS."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any


def register_agent(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser(
        "agent",
        help="a node whose pods really run, as local processes (needs root and iproute2)",
        description=(
            "Register a Node and run the pods bound to it as local processes, each pod in its own "
            "network namespace with its own IP. Stops every process it started when it stops. "
            "See docs/node-agent.md."
        ),
    )
    parser.add_argument("--node-name", default="local-0", help="Node name (default local-0)")
    parser.add_argument("--cpu", default="16", help="CPU capacity advertised (default 16)")
    parser.add_argument("--memory", default="64Gi", help="memory capacity advertised (default 64Gi)")
    parser.add_argument(
        "--gpus", type=int, default=0, help="fake nvidia.com/gpu count advertised (default 0)"
    )
    parser.add_argument("--max-pods", type=int, default=110, help="pods capacity (default 110)")
    parser.add_argument("--labels", default="", help="extra node labels: k=v,k2=v2")
    parser.add_argument(
        "--pod-cidr",
        default=None,
        help="pod addresses (default: a /24 of 10.245.0.0/16 picked from the node name)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="state and logs (default ~/.cache/coxswain/agent/<node>)"
    )
    parser.add_argument(
        "--kubeconfig", type=Path, default=None, help="default: $KUBECONFIG, else the dev cluster's"
    )
    parser.add_argument(
        "--cluster-dir", type=Path, default=None, help="dev cluster directory, for its kubeconfig"
    )
    parser.add_argument(
        "--restart-backoff",
        type=float,
        default=10.0,
        help="first crash-loop back-off in seconds (default 10, doubles to 300)",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=10.0,
        help="longest SIGTERM grace for pods when the agent stops (default 10)",
    )
    parser.set_defaults(func=_agent)


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--labels: {item!r} is not key=value")
        labels[key] = value
    return labels


def _agent(args: argparse.Namespace) -> int:
    from coxswain.devcluster import DevCluster
    from coxswain.nodeagent.agent import Agent, AgentError
    from coxswain.nodeagent.config import AgentConfig, bridge_name, default_data_dir, default_pod_cidr
    from coxswain.nodeagent.network import free_pod_cidr

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if os.geteuid() != 0:
        print("error: the node agent needs root (network namespaces, bind mounts)", file=sys.stderr)
        return 2
    if shutil.which("ip") is None:
        print("error: `ip` (iproute2) is not on PATH: apt-get install iproute2", file=sys.stderr)
        return 2
    try:
        labels = parse_labels(args.labels)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kubeconfig = args.kubeconfig or (Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None)
    if kubeconfig is None:
        kubeconfig = DevCluster(args.cluster_dir).paths.kubeconfig
    if not kubeconfig.exists():
        print(
            f"error: no kubeconfig at {kubeconfig}: start the cluster with `coxswain dev cluster up`",
            file=sys.stderr,
        )
        return 2
    cfg = AgentConfig(
        node_name=args.node_name,
        kubeconfig=kubeconfig,
        data_dir=args.data_dir or default_data_dir(args.node_name),
        # An explicit --pod-cidr is used as given; the default moves off a /24 another agent has.
        pod_cidr=args.pod_cidr
        or free_pod_cidr(default_pod_cidr(args.node_name), bridge_name(args.node_name)),
        cpu=args.cpu,
        memory=args.memory,
        gpus=args.gpus,
        max_pods=args.max_pods,
        labels=labels,
        stop_grace_seconds=args.stop_grace,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg, backoff_seconds=args.restart_backoff).run(stop)

    try:
        asyncio.run(main())
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
