"""`coxswain operator run`: the operator process (what the chart's Deployment runs)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

LOG_FORMATS = ("plain", "full", "json")


def register(sub: Any, name: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    what = parser.add_subparsers(dest="what", required=True)
    run = what.add_parser("run", help="run the operator until interrupted")
    run.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; globs like 'team-*' work); default: all namespaces",
    )
    run.add_argument(
        "--lease",
        default="coxswain",
        help="leader election: only the replica holding this coordination.k8s.io Lease acts "
        "(default %(default)s)",
    )
    run.add_argument(
        "--lease-namespace",
        default=None,
        help="the Lease's namespace (default: $POD_NAMESPACE, the pod's own, else 'default')",
    )
    run.add_argument("--standalone", action="store_true", help="no leader election: this replica always acts")
    run.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    run.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port")
    run.add_argument("--log-format", choices=LOG_FORMATS, default="plain")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    # The tenancy policy (coxswain.tenancy); the defaults are the safe ones.
    tenancy = run.add_argument_group("tenancy policy", "what a TrainingJob or ModelService may ask for")
    tenancy.add_argument(
        "--allow-host-path", action="store_true", help="allow hostPath volumes (off by default)"
    )
    tenancy.add_argument(
        "--host-path-prefix",
        action="append",
        default=[],
        metavar="PATH",
        help="with --allow-host-path: only paths under this one (repeatable; default: any)",
    )
    tenancy.add_argument(
        "--image-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="allowed image prefix (repeatable; '*' allows all; default: ghcr.io/coxswain-dev/)",
    )
    tenancy.add_argument(
        "--allow-secret",
        action="append",
        default=[],
        metavar="NAMESPACE=NAME",
        help="Secrets that specs may reference, globs allowed on both sides (repeatable; default: none)",
    )
    run.set_defaults(func=_run)


class _DropHandlerSuccess(logging.Filter):
    """Drop kopf's "Handler 'trainingjob_seen' succeeded." INFO line (and modelservice_seen's),
    logged for every watch event.

    Only that handler's: kopf's other per-object lines (and those of the handlers that still
    log through kopf's logger) stay.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.INFO
            and isinstance(record.msg, str)
            and record.msg.startswith(("Handler 'trainingjob_seen'", "Handler 'modelservice_seen'"))
        )


# kopf adopts objects of these client libraries when they are importable. The operator uses
# none of them, and `kubernetes` (installed beside it by other tools, e.g. kserve) alone adds
# 18 MB of RSS and most of a second of start-up: keep them out of this process.
FOREIGN_CLIENTS = ("kubernetes", "kubernetes_asyncio", "pykube")


def use_orjson_for_plain_json_loads() -> None:
    """Every watch event reaches the operator through kopf's `json.loads(line)`: in a burst of
    new TrainingJobs that decoding was 14% of the operator's CPU (py-spy), pods and Jobs being
    10-15 KB of JSON each. orjson decodes the same documents 3-4x faster. Only calls without
    options (kopf's; httpx's `response.json()`) take it; any call passing options keeps the
    standard decoder, and orjson's errors are `json.JSONDecodeError`s too."""
    import json

    import orjson

    standard = json.loads

    def loads(s: str | bytes | bytearray, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return standard(s, *args, **kwargs)
        return orjson.loads(s)

    json.loads = loads


def _run(args: argparse.Namespace) -> int:
    for name in FOREIGN_CLIENTS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "not installed"
    use_orjson_for_plain_json_loads()
    import kopf
    from prometheus_client import start_http_server

    from coxswain import handlers  # noqa: F401  (registers the handlers)
    from coxswain.metrics import REGISTRY
    from coxswain.startup import LeadershipOptions, configure_leadership
    from coxswain.tenancy import policy_from_flags

    try:
        policy = policy_from_flags(
            allow_host_path=args.allow_host_path,
            host_path_prefixes=args.host_path_prefix,
            image_prefixes=args.image_prefix,
            secrets=args.allow_secret,
        )
    except ValueError as exc:
        logging.getLogger("coxswain").error("%s", exc)
        return 2

    formats = {"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}
    kopf.configure(log_format=formats[args.log_format], verbose=args.log_level == "DEBUG")
    logging.getLogger().setLevel(args.log_level)
    # One line per HTTP request is noise for users; our own log lines say what changed.
    for name in ("httpx", "httpx2"):  # lightkube ships its httpx as httpx2
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").addFilter(_DropHandlerSuccess())
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=REGISTRY)
    configure_leadership(
        LeadershipOptions(standalone=args.standalone, lease=args.lease, namespace=args.lease_namespace)
    )
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        # kopf's own peering is off: every replica watches; our Lease decides who acts.
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
        memo=kopf.Memo(tenancy=policy),
    )
    return 0
