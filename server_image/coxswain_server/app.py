"""The transport layer: a raw ASGI application (no framework), routing by exact path.

Per inference request it does: one dict lookup for the route, one pass over the headers,
the protocol codec, one queue append, and two `send` calls. Errors are ServerError
subclasses turned into `{"error": message}` here, and nowhere else.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

import orjson

from coxswain_server import protocol_v1, protocol_v2
from coxswain_server.admin import AdminEndpoints
from coxswain_server.auth import Credentials
from coxswain_server.errors import (
    MethodNotAllowed,
    ModelLoadError,
    NotFound,
    NotReady,
    Overloaded,
    RequestTimeout,
    ServerError,
)
from coxswain_server.http_io import (
    JSON,
    OCTETS,
    ClientGone,
    Handler,
    Receive,
    Scope,
    Send,
    authorization,
    read_body,
    send_response,
)
from coxswain_server.limits import RequestGate
from coxswain_server.metrics import UNKNOWN_VERSION, ServerMetrics, VersionMetrics
from coxswain_server.settings import ServerSettings
from coxswain_server.traffic import watch_traffic_file
from coxswain_server.versions import ModelVersions, ServedVersion

log = logging.getLogger("coxswain_server.app")

SERVER_VERSION = "0.1.0"


class InferenceApp:
    """ASGI app serving one model's versions.

    `on_fatal(message)` is called when the versions asked for at start cannot be loaded:
    the server then exits non-zero instead of running unready forever.
    """

    def __init__(
        self,
        settings: ServerSettings,
        versions: ModelVersions,
        metrics: ServerMetrics,
        credentials: Credentials,
        *,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.versions = versions
        self.metrics = metrics
        # credentials, gate and row cap are protocol-neutral: every front end applies these same ones
        self.credentials = credentials
        self.gate = RequestGate(settings.max_concurrent_requests)
        self.request_rows = settings.request_rows
        self._read_timeout = settings.request_read_timeout_seconds
        self._admin = AdminEndpoints(versions, credentials, settings.max_body_bytes, self._read_timeout)
        self._on_fatal = on_fatal
        self.loaded = False  # every version asked for at start is loaded and warmed up
        self.draining = False  # SIGTERM seen: readiness false, in-flight work finishes
        self.inflight = 0  # requests whose body has arrived and that are not answered yet
        self._unrouted: VersionMetrics | None = None  # made on the first unroutable call
        self._tasks: list[asyncio.Task[None]] = []
        metrics.watch_inflight(lambda: self.inflight)
        metrics.watch_ready(lambda: 1.0 if self.ready else 0.0)
        m = settings.model
        self._max_body = settings.max_body_bytes
        self._retry_after = b"1"
        # exact paths -> (handler, protected); versioned paths are parsed below. Unprotected
        # paths (probes, metrics) need no token and are never refused by the request gate.
        self._routes: dict[str, tuple[Handler, bool]] = {
            "/v2/health/live": (self._live, False),
            "/v2/health/ready": (self._ready, False),
            "/metrics": (self._metrics, False),
            "/v2": (self._server_metadata, True),
            f"/v2/models/{m}": (self._model_metadata, True),
            f"/v2/models/{m}/ready": (self._model_ready, True),
            f"/v2/models/{m}/config": (self._model_config, True),
            f"/v2/models/{m}/infer": (self._infer_v2, True),
            "/v1/models": (self._v1_models, True),
            f"/v1/models/{m}": (self._model_ready, True),
            f"/v1/models/{m}:predict": (self._infer_v1, True),
            "/admin/traffic": (self._admin.traffic, True),
        }
        self._versioned = {
            "": self._model_metadata,
            "ready": self._model_ready,
            "config": self._model_config,
            "infer": self._infer_v2,
        }
        self._version_prefix = f"/v2/models/{m}/versions/"
        self._v1_version_prefix = f"/v1/models/{m}/versions/"

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining

    # --- ASGI entry ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        route = self._routes.get(path)
        version: str | None = None
        entered = False
        try:
            if route is None:
                handler, version = self._route_versioned(path)
                protected = True
            else:
                handler, protected = route
            if protected:
                if not path.startswith("/admin/"):  # admin checks its own, separate token
                    self.credentials.check_inference(authorization(scope))
                self.gate.enter()  # refused before the body is read: bodies held stay bounded
                entered = True
            await handler(scope, receive, send, version)
        except ServerError as exc:
            if isinstance(exc, Overloaded) and not entered:
                self._observe_unrouted(429, 0.0)
            await self._send_error(send, exc, None)
        except ClientGone:
            pass
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), path)
            await self._send_error(send, ServerError("internal error; see the server log"), None)
        finally:
            if entered:
                self.gate.leave()

    def _route_versioned(self, path: str) -> tuple[Handler, str | None]:
        if path.startswith(self._version_prefix):
            version, _, action = path[len(self._version_prefix) :].partition("/")
            handler = self._versioned.get(action)
            if version and handler is not None:
                return handler, version
        elif path.startswith(self._v1_version_prefix) and path.endswith(":predict"):
            version = path[len(self._v1_version_prefix) : -len(":predict")]
            if version and "/" not in version:
                return self._infer_v1, version
        elif path.startswith("/admin/versions/"):
            version, _, action = path[len("/admin/versions/") :].partition("/")
            if version and action in ("load", "unload"):
                return (self._admin.load if action == "load" else self._admin.unload), version
        elif path.startswith(("/v2/models/", "/v1/models/")):
            raise NotFound(f"this server serves model {self.settings.model!r} only; no route for {path}")
        raise NotFound(
            f"no route for {path}; see /v2/models/{self.settings.model} (v2) or "
            f"/v1/models/{self.settings.model}:predict (v1)"
        )

    # --- helpers ------------------------------------------------------------------------

    async def _send_error(self, send: Send, exc: ServerError, served: ServedVersion | None) -> None:
        extra: list[tuple[bytes, bytes]] = []
        if isinstance(exc, Overloaded):
            extra.append((b"retry-after", str(exc.retry_after).encode()))
        elif isinstance(exc, NotReady):
            extra.append((b"retry-after", self._retry_after))
        elif isinstance(exc, MethodNotAllowed):
            extra.append((b"allow", b"GET, POST"))
        elif isinstance(exc, RequestTimeout):
            extra.append((b"connection", b"close"))  # the rest of a trickled body is not waited for
        if served is not None:
            extra.append((b"x-coxswain-version", served.header))
        await send_response(send, exc.status, orjson.dumps({"error": exc.message}), JSON, extra)

    # --- inference ----------------------------------------------------------------------

    async def _infer_v2(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        await self._infer(scope, receive, send, version, v1=False)

    async def _infer_v1(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        await self._infer(scope, receive, send, version, v1=True)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, version: str | None, v1: bool) -> None:
        started = time.perf_counter()
        served: ServedVersion | None = None
        counted = False
        code = 500
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed here; use POST")
            body, header_length = await read_body(scope, receive, self._max_body, self._read_timeout)
            # Routed and counted in flight only once the body is here: the autoscaler reads
            # in-flight as work for the model, and a slow upload is none.
            served = self.versions.route(version)
            served.active += 1
            self.inflight += 1
            counted = True
            signature = served.model.signature
            if v1:
                arrays, rows = protocol_v1.decode_request(body, signature, self.request_rows)
                outputs = await served.batcher.submit(arrays, rows)
                payload = protocol_v1.encode_response(outputs, signature)
                headers = [
                    (b"content-type", JSON),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-coxswain-version", served.header),
                ]
            else:
                request = protocol_v2.decode_request(body, header_length, signature, self.request_rows)
                outputs = await served.batcher.submit(request.arrays, request.rows)
                payload, json_length = protocol_v2.encode_response(
                    self.settings.model, served.version, request, outputs, signature
                )
                headers = [
                    (b"content-type", JSON if json_length is None else OCTETS),
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-coxswain-version", served.header),
                ]
                if json_length is not None:
                    headers.append((b"inference-header-content-length", str(json_length).encode()))
            code = 200
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
        except ServerError as exc:
            code = exc.status
            await self._send_error(send, exc, served)
        except ClientGone:
            code = 499  # nginx's "client closed request": counted, nothing to send
        except Exception:
            log.exception("unexpected error serving an inference request")
            await self._send_error(send, ServerError("internal error; see the server log"), served)
        finally:
            elapsed = time.perf_counter() - started
            if counted:
                self.inflight -= 1
            if served is not None:
                served.active -= 1
                served.metrics.observe(code, elapsed)
            else:
                self._observe_unrouted(code, elapsed)

    def _observe_unrouted(self, code: int, elapsed: float) -> None:
        if self._unrouted is None:
            self._unrouted = self.metrics.version(UNKNOWN_VERSION)
        self._unrouted.observe(code, elapsed)

    # --- health and metadata ------------------------------------------------------------

    async def _live(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        await send_response(send, 200, b'{"live":true}')

    async def _ready(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        if self.ready:
            await send_response(send, 200, b'{"ready":true}')
        else:
            reason = "draining (shutting down)" if self.draining else "loading models"
            await send_response(send, 503, orjson.dumps({"ready": False, "reason": reason}))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        await send_response(send, 200, self.metrics.exposition(), b"text/plain; version=0.0.4; charset=utf-8")

    async def _server_metadata(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        body = {
            "name": "coxswain-server",
            "version": SERVER_VERSION,
            "extensions": ["binary_tensor_data", "model_configuration"],
        }
        await send_response(send, 200, orjson.dumps(body))

    def _stable(self, version: str | None) -> ServedVersion:
        """The version a metadata call is about: the named one, else the heaviest-weighted."""
        if version is not None:
            return self.versions.route(version)
        weights = self.versions.split.weights
        candidates = sorted(self.versions.served, key=lambda v: -weights.get(v, 0))
        if not candidates:
            raise NotReady(f"model {self.settings.model} is still loading; retry shortly")
        return self.versions.served[candidates[0]]

    async def _model_metadata(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        served = self._stable(version)
        versions = [version] if version is not None else list(self.versions.served)
        body = protocol_v2.model_metadata(
            self.settings.model, versions, served.model.platform, served.model.signature
        )
        await send_response(send, 200, body, JSON, [(b"x-coxswain-version", served.header)])

    async def _model_config(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        served = self._stable(version)
        body = protocol_v2.model_config(
            self.settings.model, served.model.platform, self.settings.max_batch_size, served.model.signature
        )
        await send_response(send, 200, body)

    async def _model_ready(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        ready = (version in self.versions.served) if version is not None else self.ready
        if (
            version is not None
            and not ready
            and version not in {v["version"] for v in self.versions.versions_state()}
        ):
            raise NotFound(f"model {self.settings.model} has no version {version}")
        body = {"name": self.settings.model, "ready": ready}
        if version is not None:
            body["version"] = version
        await send_response(send, 200 if ready else 503, orjson.dumps(body))

    async def _v1_models(self, scope: Scope, receive: Receive, send: Send, version: str | None) -> None:
        await send_response(send, 200, orjson.dumps({"models": [self.settings.model]}))

    # --- lifespan -----------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Load in the background: the port opens at once so liveness answers while a
                # big model loads; readiness stays false until every version is warmed up.
                self._tasks.append(asyncio.get_running_loop().create_task(self._start()))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        s = self.settings
        try:
            weights = await self.versions.load_initial()
        except (ModelLoadError, ValueError) as exc:
            message = f"cannot serve model {s.model}: {exc}"
            log.error(message)
            if self._on_fatal is not None:
                self._on_fatal(message)
            return
        # Everything loaded so far (torch, the models) lives as long as the process: move it out
        # of the collector's sight, so a full collection walks only request garbage instead of
        # pausing every in-flight request for tens of milliseconds.
        gc.collect()
        gc.freeze()
        self.loaded = True
        log.info("ready: model %s versions %s, weights %s", s.model, sorted(self.versions.served), weights)
        if s.traffic_file is not None:
            log.info("watching %s for traffic weights every %.1fs", s.traffic_file, s.traffic_poll_seconds)
            self._tasks.append(
                asyncio.get_running_loop().create_task(
                    watch_traffic_file(s.traffic_file, s.traffic_poll_seconds, self._apply_traffic_file)
                )
            )

    async def _apply_traffic_file(self, weights: dict[str, int]) -> None:
        await self.versions.set_weights(weights, load_missing=True, unload_others=True)

    async def _stop(self) -> None:
        self.draining = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.versions.close()
