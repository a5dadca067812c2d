"""`coxswain activator run`: what the chart's activator Deployment runs (scale from zero)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any


def register(sub: Any, name: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    what = parser.add_subparsers(dest="what", required=True)
    run = what.add_parser("run", help="run the activator until interrupted")
    run.add_argument("--host", default="0.0.0.0", help="address to listen on (default %(default)s)")
    run.add_argument(
        "--port", type=int, default=8080, help="the port Services route to (default %(default)s)"
    )
    run.add_argument(
        "--grpc-port",
        type=int,
        default=8081,
        help="the port Services route gRPC to (0: off; gRPC then waits for a server pod) "
        "(default %(default)s)",
    )
    run.add_argument("--admin-port", type=int, default=8082, help="/metrics, /healthz, /readyz (0: off)")
    run.add_argument(
        "--hold-timeout",
        type=float,
        default=300.0,
        help="seconds a request waits for a ready server pod before a 503 with Retry-After "
        "(default %(default)s)",
    )
    run.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="serve ModelServices of this namespace only (repeatable); default: all namespaces",
    )
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from coxswain.activator.main import serve

    if args.hold_timeout <= 0:
        raise SystemExit(f"--hold-timeout must be > 0 seconds, got {args.hold_timeout}")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    code = asyncio.run(
        serve(
            args.host,
            args.port,
            args.admin_port,
            args.hold_timeout,
            args.namespace or None,
            grpc_port=args.grpc_port,
        )
    )
    if code:
        print("coxswain activator: the EndpointSlice watch ended; see the log above", file=sys.stderr)
    return code
