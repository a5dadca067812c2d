"""Health probes of the components' HTTP(S) endpoints on loopback."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

# kube-controller-manager and kube-scheduler serve a self-signed certificate made in memory;
# the probes only ask "are you up" of a process we started on 127.0.0.1, so they skip
# verification rather than add a certificate per component.
_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE


def probe(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """(healthy, body or error) for a GET of `url`. /healthz, /readyz and /livez are open to
    anonymous callers on every component, so no credentials are sent."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=_UNVERIFIED) as response:
            body = response.read(2000).decode(errors="replace")
            return response.status == 200, body.strip()
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}: {e.read(2000).decode(errors='replace').strip()}"
    except (OSError, urllib.error.URLError) as e:
        return False, str(e)


def log_tail(log: Path, lines: int = 25) -> str:
    """The last `lines` lines of a component's log, for error messages."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"(no log at {log})"
    return "\n".join(text.splitlines()[-lines:])
