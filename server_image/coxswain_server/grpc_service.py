"""The gRPC transport: `inference.GRPCInferenceService` on its own port, on the same event
loop, versions, traffic split, batchers, auth token, metrics and drain as the HTTP side.

Handlers take the request's wire bytes and parse them here, so a message that does not
decode is INVALID_ARGUMENT (grpcio's own deserializer would answer INTERNAL). ServerError
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

import grpc
from tritonclient.grpc import service_pb2 as pb

from coxswain_server import protocol_grpc
from coxswain_server.errors import NotFound, ServerError, Unauthorized
from coxswain_server.versions import ServedVersion

if TYPE_CHECKING:
    from coxswain_server.app import InferenceApp

log = logging.getLogger("coxswain_server.grpc")

SERVICE = "inference.GRPCInferenceService"

# HTTP status of a ServerError -> the gRPC status with the same meaning
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
CLIENT_GONE = 499  # counted like HTTP's "client closed request"


def status_code(http_status: int) -> grpc.StatusCode:
    code = STATUS_CODES.get(http_status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if http_status < 500 else grpc.StatusCode.INTERNAL


Handler = Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class GrpcEndpoint:
    """The gRPC server of one InferenceApp: started and stopped with it."""

    def __init__(self, app: InferenceApp, host: str, port: int) -> None:
        self.app = app
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        settings = app.settings
        self._model = settings.model
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._options = [
            # the same body limit as HTTP; grpcio answers RESOURCE_EXHAUSTED naming both sizes
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            # grpcio sets SO_REUSEPORT by default: a second server on a taken port would then
            # start fine and silently share the traffic; fail to bind instead
            ("grpc.so_reuseport", 0),
        ]

    async def start(self) -> None:
        server = grpc.aio.server(options=self._options)
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        methods: dict[str, tuple[Handler, Callable[[Any], bytes]]] = {
            "ServerLive": (self.server_live, pb.ServerLiveResponse.SerializeToString),
            "ServerReady": (self.server_ready, pb.ServerReadyResponse.SerializeToString),
            "ModelReady": (self.model_ready, pb.ModelReadyResponse.SerializeToString),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataResponse.SerializeToString),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataResponse.SerializeToString),
            "ModelConfig": (self.model_config, pb.ModelConfigResponse.SerializeToString),
            "ModelInfer": (self.model_infer, pb.ModelInferResponse.SerializeToString),
        }
        for name, (handler, serialize) in methods.items():
            # no request_deserializer: the handler gets bytes and parses them (see the module doc)
            handlers[name] = grpc.unary_unary_rpc_method_handler(handler, response_serializer=serialize)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        try:
            server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {self.address}: {exc}") from None
        await server.start()
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

    def _check_auth(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        credentials = self.app.credentials
        if not credentials.inference_required:
            return
        given: bytes | None = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                break
        try:
            credentials.check_inference(given)
        except Unauthorized as exc:
            if given is None:  # the HTTP wording names a header; say metadata here
                raise Unauthorized("this call needs metadata authorization: Bearer <token>") from None
            raise exc

    def _check_model(self, name: str) -> None:
        if name != self._model:
            raise NotFound(f"this server serves model {self._model!r} only, not {name!r}")

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: ServerError) -> None:
        trailing: tuple[tuple[str, str], ...] = ()
        retry_after = getattr(exc, "retry_after", None)
        if exc.status in (429, 503):
            trailing = (("retry-after", str(retry_after or 1)),)
        await context.abort(status_code(exc.status), exc.message, trailing)

    # --- health and metadata ------------------------------------------------------------

    async def server_live(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return pb.ServerReadyResponse(ready=self.app.ready)

    async def model_ready(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            self._check_auth(context)
            request = protocol_grpc.parse(pb.ModelReadyRequest, data)
            self._check_model(request.name)
            versions = self.app.versions
            if not request.version:
                return pb.ModelReadyResponse(ready=self.app.ready)
            if request.version in versions.served:
                return pb.ModelReadyResponse(ready=True)
            if request.version not in {v["version"] for v in versions.versions_state()}:
                raise NotFound(f"model {self._model} has no version {request.version}")
            return pb.ModelReadyResponse(ready=False)
        except ServerError as exc:
            await self._abort(context, exc)

    async def server_metadata(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        from coxswain_server.app import SERVER_VERSION

        try:
            self._check_auth(context)
        except ServerError as exc:
            await self._abort(context, exc)
        return pb.ServerMetadataResponse(
            name="coxswain-server", version=SERVER_VERSION, extensions=["model_configuration"]
        )

    async def model_metadata(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            self._check_auth(context)
            request = protocol_grpc.parse(pb.ModelMetadataRequest, data)
            self._check_model(request.name)
            version = request.version or None
            served = self.app.stable(version)
            versions = [version] if version is not None else list(self.app.versions.served)
            return protocol_grpc.model_metadata(
                self._model, versions, served.model.platform, served.model.signature
            )
        except ServerError as exc:
            await self._abort(context, exc)

    async def model_config(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            self._check_auth(context)
            request = protocol_grpc.parse(pb.ModelConfigRequest, data)
            self._check_model(request.name)
            served = self.app.stable(request.version or None)
            return protocol_grpc.model_config(
                self._model, served.model.platform, self.app.settings.max_batch_size, served.model.signature
            )
        except ServerError as exc:
            await self._abort(context, exc)

    # --- inference ----------------------------------------------------------------------

    async def model_infer(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # the same steps and limits as HTTP's _infer (app.py): token, the request gate, the
        # row cap, the version's queue; counted in flight once routed
        app = self.app
        started = time.perf_counter()
        served: ServedVersion | None = None
        entered = counted = False
        code = 500
        try:
            self._check_auth(context)
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
            return response
        except ServerError as exc:
            code = exc.status
            await self._abort(context, exc)
        except asyncio.CancelledError:
            code = CLIENT_GONE  # the client cancelled or its deadline passed: nothing to send
            raise
        except Exception:
            log.exception("unexpected error serving a gRPC inference call")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
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
