"""`coxswain get | describe | watch | predict`: the user's view of TrainingJobs and ModelServices."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

KINDS = {
    "tj": "trainingjobs",
    "trainingjob": "trainingjobs",
    "trainingjobs": "trainingjobs",
    "ms": "modelservices",
    "modelservice": "modelservices",
    "modelservices": "modelservices",
}


def register(sub: Any, name: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig's)")
    if name == "get":
        parser.add_argument("kind", nargs="?", default="all", choices=[*KINDS, "all"], help="tj, ms or all")
        parser.add_argument("-A", "--all-namespaces", action="store_true")
        parser.set_defaults(func=_get)
    elif name == "describe":
        parser.add_argument("kind", choices=list(KINDS))
        parser.add_argument("name")
        parser.set_defaults(func=_describe)
    elif name == "watch":
        parser.add_argument("name", help="TrainingJob name")
        parser.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
        parser.set_defaults(func=_watch)
    elif name == "predict":
        parser.add_argument("name", help="ModelService name")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--file", type=Path, help='JSON file: {"instances": [...]} or a list of instances'
        )
        source.add_argument("--data", help="JSON instances inline, e.g. '[[0.1, 0.2, ...]]'")
        parser.add_argument("--url", help="server base URL (default: a ready pod of the ModelService)")
        parser.add_argument("--version", help="ask this version explicitly")
        parser.add_argument("--token-file", type=Path, help="bearer token for servers with auth")
        parser.set_defaults(func=_predict)


# -- helpers -------------------------------------------------------------------------------
def _client() -> Any:
    from lightkube import Client

    return Client(field_manager="coxswain-cli")


def _resource(plural: str) -> Any:
    from coxswain.kube import MODELSERVICE_RESOURCE, TRAININGJOB_RESOURCE

    return TRAININGJOB_RESOURCE if plural == "trainingjobs" else MODELSERVICE_RESOURCE


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "-"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def tj_row(obj: dict[str, Any]) -> list[str]:
    st = obj.get("status") or {}
    progress = st.get("progress") or {}
    percent = progress.get("percent")
    return [
        obj["metadata"]["name"],
        st.get("phase") or "-",
        f"{percent:.0f}%" if percent is not None else "-",
        _fmt(progress.get("trainLoss")),
        f"{progress.get('evalMetricName', '')}={_fmt(progress.get('evalMetric'))}"
        if progress.get("evalMetric") is not None
        else "-",
        str(st.get("restarts", 0)),
        _duration(progress.get("etaSeconds")) if st.get("phase") == "Running" else "-",
        _age(obj["metadata"].get("creationTimestamp")),
    ]


def ms_row(obj: dict[str, Any]) -> list[str]:
    st = obj.get("status") or {}
    versions = (obj.get("spec") or {}).get("versions") or {}
    canary = versions.get("canary")
    return [
        obj["metadata"]["name"],
        st.get("url") or "-",
        f"{st.get('readyReplicas', 0)}/{st.get('replicas', 0)}",
        versions.get("stable", "-"),
        f"{canary} ({versions.get('canaryPercent', 0)}%)" if canary else "-",
        _age(obj["metadata"].get("creationTimestamp")),
    ]


# -- commands ------------------------------------------------------------------------------
def _get(args: argparse.Namespace) -> int:
    client = _client()
    namespace = "*" if args.all_namespaces else args.namespace  # lightkube's "all namespaces"
    plurals = ["trainingjobs", "modelservices"] if args.kind == "all" else [KINDS[args.kind]]
    printed = False
    for plural in plurals:
        objs = [dict(o) for o in client.list(_resource(plural), namespace=namespace)]
        if not objs and args.kind == "all":
            continue
        if printed:
            print()
        if plural == "trainingjobs":
            header = ["NAME", "PHASE", "PROGRESS", "LOSS", "EVAL", "RESTARTS", "ETA", "AGE"]
            rows = [tj_row(o) for o in objs]
        else:
            header = ["NAME", "URL", "READY", "STABLE", "CANARY", "AGE"]
            rows = [ms_row(o) for o in objs]
        print(_table([header, *rows]) if rows else f"No {plural} found.")
        printed = True
    if not printed:
        print("No TrainingJobs or ModelServices found.")
    return 0


def _describe(args: argparse.Namespace) -> int:
    import yaml
    from lightkube import ApiError
    from lightkube.resources.core_v1 import Event

    client = _client()
    plural = KINDS[args.kind]
    try:
        obj = dict(client.get(_resource(plural), args.name, namespace=args.namespace))
    except ApiError as exc:
        print(f"error: {exc.status.message}", file=sys.stderr)
        return 1
    meta, st = obj["metadata"], obj.get("status") or {}
    print(
        f"Name:       {meta['name']}\nNamespace:  {meta.get('namespace')}\nAge:        {_age(meta.get('creationTimestamp'))}"
    )
    print(f"Phase:      {st.get('phase', '-')}")
    if plural == "trainingjobs":
        print(
            f"Attempt:    {st.get('attempt', '-')}   restarts: {st.get('restarts', 0)} charged, {st.get('uncountedRestarts', 0)} not charged"
        )
        if st.get("progress"):
            print(
                "Progress:\n"
                + yaml.safe_dump(st["progress"], sort_keys=False)
                .rstrip()
                .replace("\n", "\n  ")
                .join(["  ", ""])
            )
        for key, label in (
            ("lastFailure", "Last failure"),
            ("lastCheckpoint", "Last checkpoint"),
            ("exportedModel", "Exported model"),
        ):
            if st.get(key):
                print(f"{label}: {json.dumps(st[key])}")
    else:
        print(
            f"URL:        {st.get('url', '-')}\nReplicas:   {st.get('readyReplicas', 0)} ready / {st.get('replicas', 0)}"
        )
        for v in st.get("versions", []) or []:
            print(f"  version {v.get('version')}: {v.get('trafficPercent')}% traffic, ready={v.get('ready')}")
        if st.get("lastScaleDecision"):
            print(f"Last scale decision: {json.dumps(st['lastScaleDecision'])}")
    print("Conditions:")
    for cond in st.get("conditions", []) or []:
        print(
            f"  {cond['type']:<11} {cond['status']:<6} {cond.get('reason', ''):<24} {cond.get('message', '')}"
        )
    print("Spec:\n  " + yaml.safe_dump(obj.get("spec", {}), sort_keys=False).rstrip().replace("\n", "\n  "))
    events = [
        e
        for e in client.list(
            Event, namespace=meta.get("namespace"), fields={"involvedObject.name": args.name}
        )
        if e.involvedObject.kind in ("TrainingJob", "ModelService")
    ]
    print("Events:" if events else "Events:     <none>")
    for e in sorted(events, key=lambda e: str(e.lastTimestamp or e.eventTime or "")):
        print(
            f"  {e.type:<8} {e.reason:<20} {_age(str(e.lastTimestamp) if e.lastTimestamp else None):>5}  {e.message}"
        )
    return 0


def progress_line(obj: dict[str, Any]) -> tuple[float | None, str]:
    """(fraction done or None, a one-line summary) of a TrainingJob, for the live view."""
    st = obj.get("status") or {}
    progress = st.get("progress") or {}
    step, total = progress.get("step"), progress.get("totalSteps")
    fraction = (step / total) if step is not None and total else None
    parts = [st.get("phase", "Pending")]
    if step is not None:
        parts.append(f"step {step}/{total if total else '?'}")
    if progress.get("epoch") is not None:
        parts.append(f"epoch {progress['epoch']}")
    if progress.get("trainLoss") is not None:
        parts.append(f"loss {progress['trainLoss']:.4g}")
    if progress.get("evalMetric") is not None:
        parts.append(f"{progress.get('evalMetricName', 'eval')} {progress['evalMetric']:.4g}")
    if progress.get("samplesPerSecond") is not None:
        parts.append(f"{progress['samplesPerSecond']:.0f} samples/s")
    if progress.get("etaSeconds") is not None and st.get("phase") == "Running":
        parts.append(f"ETA {_duration(progress['etaSeconds'])}")
    if st.get("restarts"):
        parts.append(f"restarts {st['restarts']}")
    return fraction, " | ".join(parts)


def _watch(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    client = _client()
    resource = _resource("trainingjobs")
    with Progress(
        TextColumn("[bold]{task.fields[name]}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[line]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=1.0, name=args.name, line="waiting for the operator")
        while True:
            obj = dict(client.get(resource, args.name, namespace=args.namespace))
            fraction, line = progress_line(obj)
            phase = (obj.get("status") or {}).get("phase")
            bar.update(task, completed=fraction if fraction is not None else 0.0, line=line)
            if phase in ("Succeeded", "Failed"):
                if phase == "Succeeded":
                    bar.update(task, completed=1.0)
                break
            time.sleep(args.interval)
    st = obj.get("status") or {}
    final: dict[str, Any] = next((c for c in st.get("conditions", []) if c["type"] == phase), {})
    print(f"{args.name}: {phase}: {final.get('message', '')}")
    return 0 if phase == "Succeeded" else 1


def _predict(args: argparse.Namespace) -> int:
    import httpx

    body = json.loads(args.file.read_text()) if args.file else json.loads(args.data)
    if isinstance(body, list):
        body = {"instances": body}
    url, model = args.url, args.name
    if not url:
        url, model = _service_url(args.name, args.namespace)
    # The explicit-version path always reaches that version, whatever the traffic weights.
    path = (
        f"/v1/models/{model}/versions/{args.version}:predict"
        if args.version
        else f"/v1/models/{model}:predict"
    )
    headers = {}
    if args.token_file:
        headers["Authorization"] = f"Bearer {args.token_file.read_text().strip()}"
    response = httpx.post(url.rstrip("/") + path, json=body, headers=headers, timeout=30)
    if response.status_code >= 400:
        print(f"error {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    served = response.headers.get("x-coxswain-version")
    print(json.dumps(response.json(), indent=2))
    if served:
        print(f"(served by version {served})", file=sys.stderr)
    return 0


def _service_url(name: str, namespace: str | None) -> tuple[str, str]:
    """(base URL, served model name): a ready endpoint of the ModelService's Service.

    Pod addresses are reachable from this host on the dev cluster; elsewhere pass --url
    (for example after `kubectl port-forward svc/NAME 8080:80`).
    """
    from lightkube.resources.discovery_v1 import EndpointSlice

    client = _client()
    ms = dict(client.get(_resource("modelservices"), name, namespace=namespace))
    model = _served_model_name(ms)
    for eps in client.list(
        EndpointSlice, namespace=ms["metadata"]["namespace"], labels={"kubernetes.io/service-name": name}
    ):
        port = next((p.port for p in eps.ports or [] if p.name == "http" and p.port), 8080)
        for ep in eps.endpoints or []:
            if ep.conditions is None or ep.conditions.ready:
                return f"http://{ep.addresses[0]}:{port}", model
    url = (ms.get("status") or {}).get("url")
    if not url:
        raise SystemExit(
            f"ModelService {name} has no ready endpoint and no status.url yet; see `coxswain describe ms {name}`"
        )
    return str(url), model


def _served_model_name(ms: dict[str, Any]) -> str:
    """The model name the server knows: the last path element of spec.model.uri, or the job's name."""
    source = (ms.get("spec") or {}).get("model") or {}
    if source.get("uri"):
        return str(source["uri"]).rstrip("/").rsplit("/", 1)[-1]
    if source.get("trainingJobRef"):
        return str(source["trainingJobRef"]["name"])
    return str(ms["metadata"]["name"])
