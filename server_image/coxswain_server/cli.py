"""`coxswain-server`: start the model server by hand or from a pod."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from coxswain_server.settings import ENV_PREFIX, ServerSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coxswain-server",
        description="Serve a model from a Coxswain model repository (Open Inference Protocol v2 and v1 predict). "
        f"Every flag also reads from the environment as {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}MAX_BATCH_SIZE); flags win.",
    )
    a = p.add_argument
    a("--repository", help="model repository root (holds <model>/<version>/manifest.json)")
    a("--model", help="model name to serve")
    a(
        "--version",
        dest="versions",
        action="append",
        help="a version to load; repeat for several (default: newest)",
    )
    a(
        "--weights",
        help="traffic weights for unversioned calls, e.g. v1=90,v2=10 (default: all to the first version)",
    )
    a("--traffic-file", help="JSON/YAML file of weights, watched for changes (what the operator writes)")
    a("--traffic-poll-seconds", type=float)
    a("--host", help="address to listen on (default 0.0.0.0)")
    a("--port", type=int, help="port (default 8080)")
    a("--max-batch-size", type=int, help="rows per model batch (default 32)")
    a(
        "--max-latency-ms",
        type=float,
        help="longest wait for a batch to fill (default 0: run when the model is free)",
    )
    a("--max-queue-size", type=int, help="requests queued per version before 429 (default 1024)")
    a("--max-queue-rows", type=int, help="rows queued per version before 429 (default 32 x --max-batch-size)")
    a(
        "--max-request-rows",
        type=int,
        help="rows one request may carry; more gets 413 (default and most: --max-batch-size)",
    )
    a(
        "--max-concurrent-requests",
        type=int,
        help="requests held at once, body reading included; more get 429 at once (default 128)",
    )
    a(
        "--request-read-timeout-seconds",
        type=float,
        help="the whole request body must arrive within this, else 408 (default 30)",
    )
    a(
        "--inline-below-us",
        type=float,
        help="batches whose forward takes less than this run on the event loop, skipping the thread hand-off "
        "(default 200; 0: always the inference thread)",
    )
    a("--max-body-bytes", type=int, help="largest request body before 413 (default 8 MiB)")
    a(
        "--auth-token-file",
        help="file holding the bearer token clients must send (also COXSWAIN_SERVER_AUTH_TOKEN)",
    )
    a(
        "--admin-token-file",
        help="bearer token for /admin/*, not the auth token's (also COXSWAIN_SERVER_ADMIN_TOKEN; none: admin off)",
    )
    a("--key-file", help="AES-256 key for encrypted models (also COXSWAIN_ENCRYPTION_KEY[_FILE])")
    a(
        "--threads",
        type=int,
        help="torch intra-op threads (default: the CPU limit minus one for the event loop, at least 1; limit from COXSWAIN_CPU_LIMIT or the cgroup)",
    )
    a("--device", choices=["cpu", "cuda", "auto"])
    a(
        "--graceful-timeout-seconds",
        type=float,
        help="after SIGTERM, longest wait for in-flight requests (default 30)",
    )
    a("--drain-seconds", type=float, help="after SIGTERM, keep serving unready this long first (default 0)")
    a("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = ServerSettings.from_sources(vars(args))
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        print(f"coxswain-server: invalid settings: {problems}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from coxswain_server.server import run  # torch import deferred: --help stays instant

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
