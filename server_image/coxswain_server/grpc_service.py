"""The gRPC side: `inference.GRPCInferenceService` on its own port, on the same event loop,
versions, traffic split, batchers, auth token, metrics and drain as the HTTP side, over the
HTTP/2 transport in `h2_unary.py` (every method of the service is unary).

Handlers take the request's wire bytes and parse them here, so a message that does not
decode is INVALID_ARGUMENT naming the message. ServerError
subclasses map to the status codes below by their HTTP status; the call is counted in the
metrics under that HTTP status with protocol="grpc". Triton's extensions other than
ModelConfig (statistics, repository, shared memory, trace, logging) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tritonclient.grpc import service_pb2 as pb

from coxswain.grpc_wire import (
    DEADLINE_EXCEEDED,
    FAILED_PRECONDITION,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNIMPLEMENTED,
)
from coxswain_server import protocol_grpc
from coxswain_server.errors import NotFound, ServerError, Unauthorized
from coxswain_server.h2_unary import Call, GrpcAbort, UnaryServer
from coxswain_server.versions import ServedVersion

if TYPE_CHECKING:
    from coxswain_server.app import InferenceApp

log = logging.getLogger("coxswain_server.grpc")

SERVICE = "inference.GRPCInferenceService"

# HTTP status of a ServerError -> the gRPC status with the same meaning
STATUS_CODES: dict[int, int] = {
    400: INVALID_ARGUMENT,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: NOT_FOUND,
    405: UNIMPLEMENTED,
    408: DEADLINE_EXCEEDED,
    409: FAILED_PRECONDITION,
    413: RESOURCE_EXHAUSTED,
    415: INVALID_ARGUMENT,
    429: RESOURCE_EXHAUSTED,
    503: UNAVAILABLE,
}
# gRPC status of a call the transport refused -> the HTTP status it is counted under
REFUSAL_STATUS = {RESOURCE_EXHAUSTED: 413, UNIMPLEMENTED: 501, DEADLINE_EXCEEDED: 408}
CLIENT_GONE = 499  # counted like HTTP's "client closed request"


def status_code(http_status: int) -> int:
    code = STATUS_CODES.get(http_status)
    if code is not None:
        return code
    return INVALID_ARGUMENT if http_status < 500 else INTERNAL


def wire(message: Any) -> bytes:
    """A protobuf message's bytes (the stubs are untyped)."""
    data: bytes = message.SerializeToString()
    return data


def abort(exc: ServerError) -> GrpcAbort:
    trailing: tuple[tuple[str, str], ...] = ()
    retry_after = getattr(exc, "retry_after", None)
    if exc.status in (429, 503):
        trailing = (("retry-after", str(retry_after or 1)),)
    return GrpcAbort(status_code(exc.status), exc.message, trailing)


Handler = Callable[[bytes, Call], Awaitable[bytes]]


class GrpcEndpoint:
    """The gRPC server of one InferenceApp: started and stopped with it."""

    def __init__(self, app: InferenceApp, host: str, port: int) -> None:
        self.app = app
        self.host, self.port = host, port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._model = app.settings.model
        self._server: UnaryServer | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        methods: dict[str, Handler] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelConfig": self.model_config,
            "ModelInfer": self.model_infer,
        }
        server = UnaryServer(
            {f"/{SERVICE}/{name}": handler for name, handler in methods.items()},
            # the same body limit as HTTP; a bigger message is RESOURCE_EXHAUSTED naming both sizes
            max_message=self.app.settings.max_body_bytes,
            read_timeout=self.app.settings.request_read_timeout_seconds,
            on_refused=self._refused,
        )
        try:
            await server.start(self.host, self.port)
        except OSError as exc:
            raise OSError(f"cannot listen for gRPC on {self.address}: {exc.strerror or exc}") from None
        self._server = server
        log.info("gRPC (%s) listening on %s", SERVICE, self.address)

    async def stop(self, grace_seconds: float) -> None:
        """Refuse new calls at once; let calls in flight finish for up to `grace_seconds`."""
        # called twice on SIGTERM (beside the HTTP shutdown, then from the lifespan): both wait
        if self._stopping is None:
            if self._server is None:
                return
            self._stopping = asyncio.ensure_future(self._server.stop(grace_seconds))
        await asyncio.shield(self._stopping)

    # --- helpers ------------------------------------------------------------------------

    def _refused(self, method: str, code: int) -> None:
        if method.endswith("/ModelInfer"):
            self.app.observe_unrouted(REFUSAL_STATUS.get(code, 400), 0.0, "grpc")

    def _check_auth(self, call: Call) -> None:
        credentials = self.app.credentials
        if not credentials.inference_required:
            return
        given = call.header(b"authorization")
        try:
            credentials.check_inference(given)
        except Unauthorized as exc:
            if given is None:  # the HTTP wording names a header; say metadata here
                raise Unauthorized("this call needs metadata authorization: Bearer <token>") from None
            raise exc

    def _check_model(self, name: str) -> None:
        if name != self._model:
            raise NotFound(f"this server serves model {self._model!r} only, not {name!r}")

    # --- health and metadata ------------------------------------------------------------

    async def server_live(self, data: bytes, call: Call) -> bytes:
        return LIVE

    async def server_ready(self, data: bytes, call: Call) -> bytes:
        return READY if self.app.ready else NOT_READY

    async def model_ready(self, data: bytes, call: Call) -> bytes:
        try:
            self._check_auth(call)
            request = protocol_grpc.parse(pb.ModelReadyRequest, data)
            self._check_model(request.name)
            versions = self.app.versions
            if not request.version:
                ready = self.app.ready
            elif request.version in versions.served:
                ready = True
            elif request.version not in {v["version"] for v in versions.versions_state()}:
                raise NotFound(f"model {self._model} has no version {request.version}")
            else:
                ready = False
            return wire(pb.ModelReadyResponse(ready=ready))
        except ServerError as exc:
            raise abort(exc) from None

    async def server_metadata(self, data: bytes, call: Call) -> bytes:
        from coxswain_server.app import SERVER_VERSION

        try:
            self._check_auth(call)
        except ServerError as exc:
            raise abort(exc) from None
        return wire(
            pb.ServerMetadataResponse(
                name="coxswain-server", version=SERVER_VERSION, extensions=["model_configuration"]
            )
        )

    async def model_metadata(self, data: bytes, call: Call) -> bytes:
        try:
            self._check_auth(call)
            request = protocol_grpc.parse(pb.ModelMetadataRequest, data)
            self._check_model(request.name)
            version = request.version or None
            served = self.app.stable(version)
            versions = [version] if version is not None else list(self.app.versions.served)
            return wire(
                protocol_grpc.model_metadata(
                    self._model, versions, served.model.platform, served.model.signature
                )
            )
        except ServerError as exc:
            raise abort(exc) from None

    async def model_config(self, data: bytes, call: Call) -> bytes:
        try:
            self._check_auth(call)
            request = protocol_grpc.parse(pb.ModelConfigRequest, data)
            self._check_model(request.name)
            served = self.app.stable(request.version or None)
            return wire(
                protocol_grpc.model_config(
                    self._model,
                    served.model.platform,
                    self.app.settings.max_batch_size,
                    served.model.signature,
                )
            )
        except ServerError as exc:
            raise abort(exc) from None

    # --- inference ----------------------------------------------------------------------

    async def model_infer(self, data: bytes, call: Call) -> bytes:
        # the same steps and limits as HTTP's _infer (app.py): token, the request gate, the
        # row cap, the version's queue; counted in flight once routed
        app = self.app
        started = time.perf_counter()
        served: ServedVersion | None = None
        entered = counted = False
        code = 500
        try:
            self._check_auth(call)
            app.gate.enter()
            entered = True
            message = protocol_grpc.parse(pb.ModelInferRequest, data)
            self._check_model(message.model_name)
            served = app.versions.route(message.model_version or None)
            served.active += 1
            app.inflight += 1
            counted = True
            signature = served.model.signature
            request = protocol_grpc.decode_request(message, signature, app.request_rows)
            outputs = await served.batcher.submit(request.arrays, request.rows)
            response = protocol_grpc.encode_response(self._model, served.version, request, outputs, signature)
            code = 200
            return wire(response)
        except ServerError as exc:
            code = exc.status
            raise abort(exc) from None
        except asyncio.CancelledError:
            code = CLIENT_GONE  # the client cancelled or its deadline passed: nothing to send
            raise
        except Exception:
            log.exception("unexpected error serving a gRPC inference call")
            raise GrpcAbort(INTERNAL, "internal error; see the server log") from None
        finally:
            elapsed = time.perf_counter() - started
            if entered:
                app.gate.leave()
            if counted:
                app.inflight -= 1
            if served is not None:
                served.active -= 1
                served.metrics.observe(code, elapsed, "grpc")
            else:
                app.observe_unrouted(code, elapsed, "grpc")


LIVE = wire(pb.ServerLiveResponse(live=True))
READY = wire(pb.ServerReadyResponse(ready=True))
NOT_READY = wire(pb.ServerReadyResponse(ready=False))
