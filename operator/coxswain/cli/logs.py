"""`coxswain logs POD [-n NS] [-c CONTAINER] [-f] [--previous]`: logs of pods run by the
local node agent (`coxswain dev agent`), read from its log files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any, name: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("pod", help="pod name")
    parser.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    parser.add_argument("-c", "--container", default=None, help="container (needed when the pod has several)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the pod's containers end"
    )
    parser.add_argument(
        "-p", "--previous", action="store_true", help="the previous run of a restarted container"
    )
    parser.add_argument("--tail", type=int, default=None, help="only the last N lines")
    parser.add_argument(
        "--agent-dir",
        type=Path,
        default=None,
        help="agents' data root (default $COXSWAIN_AGENT_DIR or ~/.cache/coxswain/agent)",
    )
    parser.set_defaults(func=_logs)


def _logs(args: argparse.Namespace) -> int:
    from coxswain.nodeagent.logs import LogNotFound, find_logs, follow

    try:
        found = find_logs(args.pod, args.namespace, args.container, args.agent_dir)
    except LogNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    files = list(found.files)
    if args.previous:
        if len(files) < 2:
            print(
                f"error: container {found.container} of pod {args.namespace}/{args.pod} has not restarted",
                file=sys.stderr,
            )
            return 1
        files = files[-2:-1]
    else:
        files = files[-1:]
    if not files:
        print(f"error: container {found.container} has not started yet", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    data = files[0].read_bytes()
    shown = data
    if args.tail is not None:
        shown = b"".join(data.splitlines(keepends=True)[-args.tail :]) if args.tail > 0 else b""
    out.write(shown)
    out.flush()
    if args.follow and not args.previous:
        try:
            for chunk in follow(files[0], found.pod_runtime_dir, offset=len(data)):
                out.write(chunk)
                out.flush()
        except KeyboardInterrupt:
            return 130
    return 0
