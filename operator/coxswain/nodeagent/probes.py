"""Readiness, liveness and startup probes: httpGet, tcpSocket and exec, with the kubelet's
timing fields (initialDelaySeconds, periodSeconds, timeoutSeconds, success/failureThreshold)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

# Run a command in the container; returns its exit status.
ExecRunner = Callable[[Sequence[str], float], Awaitable[int]]


def _port(value: int | str, container: Mapping[str, Any]) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for p in container.get("ports") or []:
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {value!r}")


async def _http_get(host: str, port: int, path: str, headers: Mapping[str, str], seconds: float) -> bool:
    # A tiny HTTP/1.0 GET: 200-399 is success, as for the kubelet.
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), seconds)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"GET {path or '/'} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/coxswain\r\n{head}\r\n".encode()
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), seconds)
        parts = line.split()
        return len(parts) >= 2 and 200 <= int(parts[1]) < 400
    finally:
        writer.close()


async def probe_once(
    probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str, run_exec: ExecRunner
) -> tuple[bool, str]:
    """(success, message). Any error is a failure with its text."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if probe.get("httpGet"):
            h = probe["httpGet"]
            if (h.get("scheme") or "HTTP").upper() != "HTTP":
                return False, "httpGet scheme HTTPS is not supported by the node agent"
            headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
            ok = await _http_get(
                h.get("host") or pod_ip, _port(h["port"], container), h.get("path") or "/", headers, timeout
            )
            return ok, "" if ok else f"HTTP probe failed: GET {h.get('path') or '/'}"
        if probe.get("tcpSocket"):
            t = probe["tcpSocket"]
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(t.get("host") or pod_ip, _port(t["port"], container)), timeout
            )
            writer.close()
            return True, ""
        if probe.get("exec"):
            code = await run_exec(probe["exec"]["command"], timeout)
            return code == 0, "" if code == 0 else f"exec probe exited {code}"
        return False, "probe has no handler this node agent supports (httpGet, tcpSocket, exec)"
    except (OSError, TimeoutError, ValueError) as e:
        return False, f"probe failed: {e or type(e).__name__}"


async def probe_loop(
    probe: Mapping[str, Any],
    container: Mapping[str, Any],
    pod_ip: str,
    run_exec: ExecRunner,
    on_result: Callable[[bool, str], None],
    stop_on_success: bool = False,
) -> None:
    """Report every change of the thresholded result; return at the first success if asked
    (startup probes), run until cancelled otherwise."""
    await asyncio.sleep(float(probe.get("initialDelaySeconds") or 0))
    period = float(probe.get("periodSeconds") or 10)
    need_ok, need_fail = int(probe.get("successThreshold") or 1), int(probe.get("failureThreshold") or 3)
    oks = fails = 0
    state: bool | None = None
    while True:
        ok, message = await probe_once(probe, container, pod_ip, run_exec)
        oks, fails = (oks + 1, 0) if ok else (0, fails + 1)
        if ok and oks >= need_ok and state is not True:
            state = True
            on_result(True, "")
            if stop_on_success:
                return
        elif not ok and fails >= need_fail and state is not False:
            state = False
            on_result(False, message)
        await asyncio.sleep(period)
