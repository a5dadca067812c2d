"""Assemble the layers and run them on uvicorn (httptools + uvloop), with a shutdown that
finishes in-flight work: on SIGTERM readiness goes false at once, the server keeps serving
for `drain_seconds` (so endpoints controllers stop sending traffic), then stops accepting,
finishes every in-flight request (up to `graceful_timeout_seconds`) and exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

import uvicorn

from coxswain.artifacts import crypto
from coxswain_server.app import InferenceApp
from coxswain_server.auth import Credentials
from coxswain_server.cpu_limit import cpu_limit
from coxswain_server.metrics import ServerMetrics
from coxswain_server.model import configure_torch, resolve_device
from coxswain_server.settings import ServerSettings
from coxswain_server.versions import ModelVersions

log = logging.getLogger("coxswain_server")

TERMINATION_LOG = Path("/dev/termination-log")


class _Server(uvicorn.Server):
    """uvicorn's server, but SIGTERM drains and exits 0 instead of re-raising the signal
    (which would make every clean rollout look like a crash: exit 143)."""

    def __init__(self, config: uvicorn.Config, app: InferenceApp, drain_seconds: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_seconds = drain_seconds
        self._exit_at: float | None = None
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._app.draining and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting
        if not self._app.draining:
            log.info(
                "signal %s: readiness is now false; serving %.1fs more, then finishing in-flight requests and exiting",
                signal.Signals(sig).name,
                self._drain_seconds,
            )
        self._app.draining = True
        if self._drain_seconds > 0 and self._exit_at is None:
            self._exit_at = time.monotonic() + self._drain_seconds
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            return True
        return await super().on_tick(counter)

    def fatal(self, message: str) -> None:
        self.exit_code = 1
        self.should_exit = True
        with contextlib.suppress(OSError):  # not a pod, or no termination log mounted
            TERMINATION_LOG.write_text(message[:4000])  # shown by kubectl describe pod


def _read_token(path: Path | None, value: str | None, what: str) -> str | None:
    if path is not None:
        token = path.read_text().strip()
        if not token:
            raise SystemExit(f"{what} file {path} is empty; put the token in it or drop the flag")
        return token
    return value or None


def run(settings: ServerSettings) -> int:
    """Serve until SIGTERM/SIGINT; the process exit code."""
    # The event loop (HTTP, JSON, batching) keeps one CPU busy under load; giving torch that
    # CPU too makes its threads and the loop take turns on it (OpenMP threads spin while they
    # wait). Measured on 2 busy CPUs, MLP, wrk -c32: 1 torch thread cost 71 us of CPU per
    # request; 2 threads cost 210-380 us and served 3-5x fewer requests.
    threads = settings.threads or max(1, cpu_limit() - 1)
    configure_torch(threads)
    device = resolve_device(settings.device)
    # the trainer's names: a key file (the mounted Secret) or the key itself in env
    key_file = settings.key_file or os.environ.get("COXSWAIN_ENCRYPTION_KEY_FILE") or None
    try:
        key = crypto.load_key(key_file)
    except (OSError, crypto.InvalidKeyError) as exc:
        log.error("cannot read the encryption key from %s: %s", key_file or "COXSWAIN_ENCRYPTION_KEY", exc)
        return 2
    auth = _read_token(settings.auth_token_file, settings.auth_token, "auth token")
    admin = _read_token(settings.admin_token_file, settings.admin_token, "admin token")
    try:
        credentials = Credentials(auth, admin)
    except ValueError as exc:
        log.error("%s; put another token in --admin-token-file", exc)
        return 2
    metrics = ServerMetrics(settings.model)
    inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    versions = ModelVersions(settings, metrics, inference, key, device)
    holder: dict[str, _Server] = {}

    def on_fatal(message: str) -> None:
        holder["server"].fatal(message)

    app = InferenceApp(settings, versions, metrics, credentials, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,  # one log line per request would cost more than the request
        log_config=None,
        server_header=False,
        date_header=False,
        backlog=4096,
        timeout_graceful_shutdown=max(1, round(settings.graceful_timeout_seconds)),  # None would wait forever
        timeout_keep_alive=75,  # longer than typical load balancers' idle timeout (60 s)
    )
    server = _Server(config, app, settings.drain_seconds)
    holder["server"] = server
    log.info(
        "coxswain-server %s on %s:%d, model %s from %s, torch threads %d, device %s, batching max %d rows / %.1f ms, "
        "queue %d requests / %d rows, at most %d rows per request and %d requests at once%s, admin %s",
        "0.1.0", settings.host, settings.port, settings.model, settings.repository, threads, device,
        settings.max_batch_size, settings.max_latency_ms, settings.max_queue_size, settings.queue_rows,
        settings.request_rows, settings.max_concurrent_requests,
        ", bearer-token auth on" if auth else "", "on" if credentials.admin_on else "off",
    )  # fmt: skip
    try:
        server.run()
    finally:
        inference.shutdown(wait=False, cancel_futures=True)
    if server.exit_code:
        return server.exit_code
    log.info("stopped cleanly")
    return 0
