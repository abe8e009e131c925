"""The HTTP server: KServe's REST server with limits, JSON errors, readiness and draining.

``serve`` runs it: a ``LoopbackModelServer`` (kserve's ModelServer, listening before the
model loads) on a ``LimitedRESTServer`` (KServe's REST server bound to a chosen host,
with the ``RequestLimits`` middleware, JSON bodies for FastAPI's own errors and a
``DrainingServer``), whose ``ServingDataPlane`` reports readiness.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from collections.abc import Awaitable, Callable

# First: protocol imports kserve with sys.argv hidden from it (kserve parses sys.argv when
# it is imported); kserve is only imported below, after it.
from components.deploy.server.protocol import INFERENCE_HEADER, parse_v2_body

# isort: split
import kserve
import uvicorn
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, PredictorProtocol
from kserve.errors import ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer
from kserve.protocol.rest.v1_endpoints import V1Endpoints
from prometheus_client import Counter
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.importer import import_from_string

from components.deploy import DEFAULT_HTTP_PORT, LOOPBACK
from components.deploy.server import tfserving_rest, v2_rest
from components.deploy.server.grpc_server import build_grpc_server
from components.deploy.server.limits import DEFAULT_LIMITS, InflightBound, ServerLimits
from components.deploy.server.model import ImageModel, parse_version
from components.deploy.server.repository_poll import RepositoryPoll
from components.deploy.server.uris import ForbiddenUri, UriReader

# SageMaker's serving contract (what its TensorFlow Serving container answers on 8080).
SAGEMAKER_PREDICT_ROUTE = "/invocations"
SAGEMAKER_HEALTH_ROUTE = "/ping"

RETRY_AFTER_S = 1
# Methods that never count against the in-flight bound: probes, metadata, metrics.
_UNBOUNDED_METHODS = ("GET", "HEAD", "OPTIONS")
# How much of a refused body is read (and dropped) before the 413 when the connection
# closes after the answer; beyond it the answer goes out at once.
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)
# kserve 0.21 answers with ORJSONResponse, which fastapi deprecates: one warning a request.
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")

REJECTED_REQUESTS = Counter(
    "image_classifier_rejected_requests",
    "Requests refused before the model saw them, by reason",
    ["reason"],
)


# --- the request limits (ASGI middleware) ----------------------------------------------


class _BodyTooLarge(Exception):
    pass


async def _send_error(
    send: Callable[[dict], Awaitable[None]],
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: a bound on request bodies (413) and on requests in flight (503).

    The bounds are ``limits.max_body_bytes`` and ``limits.max_inflight``. The body bound
    is checked from Content-Length, answered before the body is read, and again while the
    body is read, which catches chunked bodies (the app's own answer is then replaced by
    the 413). Either way uvicorn discards the rest of the body as it arrives, without
    buffering it, and keeps the connection: closing it on a client still sending would
    reset the connection before most clients read the 413 (those that send
    ``Expect: 100-continue``, like curl, never send the body). Where the client asked for
    the connection to close, the rest of the body (up to 64 MiB) is read and dropped
    before the 413, for the same reason. The in-flight bound counts requests of every
    method but GET, HEAD and OPTIONS (so probes always answer) from their arrival to their
    answer, and refuses the ones beyond it at once with 503 and ``Retry-After``. 0
    disables either bound.
    """

    def __init__(
        self, app, limits: ServerLimits = DEFAULT_LIMITS, inflight: InflightBound | None = None
    ):
        self.app = app
        self.max_body_bytes = limits.max_body_bytes
        self.inflight = inflight or InflightBound(limits.max_inflight)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is None:
            await _send_error(send, 400, "invalid Content-Length header")
            return
        if self.max_body_bytes and length > self.max_body_bytes:
            REJECTED_REQUESTS.labels("body_too_large").inc()
            if _closes_after_answer(scope) and length <= _DRAIN_LIMIT_BYTES:
                await _drain(receive)
            await _send_error(
                send,
                413,
                f"the request body is {length} bytes, more than the limit of "
                f"{self.max_body_bytes} bytes",
            )
            return
        bounded = scope["method"] not in _UNBOUNDED_METHODS
        if bounded and not self.inflight.enter():
            REJECTED_REQUESTS.labels("overloaded").inc()
            await _send_error(
                send,
                503,
                self.inflight.busy_message(),
                [(b"retry-after", str(RETRY_AFTER_S).encode("ascii"))],
            )
            return
        try:
            await self._bounded_body(scope, receive, send)
        finally:
            if bounded:
                self.inflight.leave()

    async def _bounded_body(self, scope, receive, send) -> None:
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> dict:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request" and self.max_body_bytes:
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if too_large:
                return  # the app's answer to a body it could not read: the 413 replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            REJECTED_REQUESTS.labels("body_too_large").inc()
            if _closes_after_answer(scope):
                await _drain(receive, _DRAIN_LIMIT_BYTES - received)
            await _send_error(
                send,
                413,
                f"the request body is more than the limit of {self.max_body_bytes} bytes",
            )


def _closes_after_answer(scope: dict) -> bool:
    """Whether uvicorn closes the connection once answered (``Connection: close``, HTTP/1.0).

    Closing it on a client still sending its body resets the connection, and most
    clients then never read the answer: for those, a refused body is read first.
    """
    if scope.get("http_version") == "1.0":
        return True
    return any(
        name == b"connection" and b"close" in value.lower()
        for name, value in scope.get("headers", [])
    )


async def _drain(receive: Callable[[], Awaitable[dict]], limit: int = _DRAIN_LIMIT_BYTES):
    """Reads and drops the rest of a request body, up to ``limit`` bytes."""
    while limit > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        limit -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope: dict) -> int | None:
    """The request's Content-Length (0 when absent), None when it is not a number."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return 0


# --- JSON errors, readiness, draining --------------------------------------------------


async def _http_error(_, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)


async def _forbidden_uri(_, exc: ForbiddenUri) -> JSONResponse:
    REJECTED_REQUESTS.labels("uri_not_allowed").inc()
    return JSONResponse({"error": exc.message}, 403)


async def _validation_error(_, exc: RequestValidationError) -> JSONResponse:
    problems = [
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg')}"
        for error in exc.errors()[:3]
    ]
    return JSONResponse({"error": "invalid request: " + "; ".join(problems)}, 400)


class ServingDataPlane(DataPlane):
    """KServe's data plane with readiness that covers model loading and shutdown.

    KServe's server readiness is always true; here it is true once every registered
    model is loaded and until the server starts shutting down (``draining``). Readiness
    probes (``/v1/models/<name>``, ``/v2/models/<name>/ready``) see the drain; predict
    requests, which KServe checks with ``disable_predictor_health_check=True``, are still
    served while it lasts. A model that is not loaded is never loaded by a request (KServe
    would load it in the event loop): ModelNotReady, 503 or UNAVAILABLE. v2 bodies that
    arrive as bytes (JSON of another content type, or the binary tensor extension) are
    read by ``protocol.parse_v2_body``: KServe decodes binary BYTES tensors as UTF-8 text.
    KServe v2's model readiness and metadata take a version (``model_version``, the
    text of a path's ``versions/<N>`` or of gRPC's ``version``), which KServe's ignore.
    """

    def __init__(self, model_registry):
        super().__init__(model_registry)
        self.draining = False

    async def ready(self) -> bool:
        if self.draining:
            return False
        models = list(self.model_registry.get_models().values())
        return bool(models) and all([await model.healthy() for model in models])

    async def model_ready(
        self,
        model_name: str,
        disable_predictor_health_check: bool = False,
        model_version: str | None = None,
    ) -> bool:
        """Whether the model (or the one version ``model_version`` names) answers.

        Raises:
            ModelNotFound: for another model, or a version that is not served.
        """
        ready = await super().model_ready(model_name, disable_predictor_health_check)
        version = parse_version(model_name, model_version)
        if version is not None:
            model: ImageModel = self._model_registry.get_model(model_name)
            ready = model.served(version).available
        return ready and (disable_predictor_health_check or not self.draining)

    async def model_metadata(self, model_name: str, model_version: str | None = None) -> dict:
        """KServe v2's model metadata of the latest version, or of the one
        ``model_version`` names: ``versions`` (every served version, or that one) and
        that version's ``inputs`` and ``outputs`` (none until it is loaded).

        Raises:
            ModelNotFound: for another model, or a version that is not served.
        """
        model: ImageModel = self.get_model_from_registry(model_name)
        served = model.served(parse_version(model_name, model_version))
        versions = [served.number] if model_version else list(model.versions)
        return {
            "name": model_name,
            "versions": [str(number) for number in versions],
            "platform": "",
            "inputs": model.get_input_types(served.number),
            "outputs": model.get_output_types(served.number),
        }

    async def get_model(self, name: str):
        model = self._model_registry.get_model(name)
        if model is not None and not await self._model_registry.is_model_ready(name):
            raise ModelNotReady(name)
        return await super().get_model(name)

    def decode(self, body, headers, protocol_version=PredictorProtocol.REST_V1.value, **kwargs):
        if protocol_version.lower() == PredictorProtocol.REST_V2.value and isinstance(body, bytes):
            lowered = {name.lower(): value for name, value in (headers or {}).items()}
            return parse_v2_body(body, lowered.get(INFERENCE_HEADER), kwargs.get("model_name")), {}
        return super().decode(body, headers, protocol_version=protocol_version, **kwargs)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with readiness off from the first SIGTERM/SIGINT and an optional
    delay before it stops accepting connections (a second signal ends the delay)."""

    def __init__(self, config: uvicorn.Config, dataplane: ServingDataPlane, delay_s: float):
        super().__init__(config)
        self.dataplane = dataplane
        self.delay_s = delay_s
        self._stop_at: float | None = None

    def handle_exit(self, sig, frame) -> None:
        self.dataplane.draining = True
        if self._stop_at is None and self.delay_s > 0 and not self.should_exit:
            # Recorded like uvicorn's own handler does, so it re-raises it once stopped.
            self._captured_signals.append(sig)
            self._stop_at = time.monotonic() + self.delay_s
            log.info("not ready; stopping in %.1f s (signal %s)", self.delay_s, sig)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


# --- the servers -----------------------------------------------------------------------


class LimitedRESTServer(RESTServer):
    """KServe's REST server bound to ``host``, with ``RequestLimits`` (over ``inflight``),
    JSON bodies for FastAPI's own errors (404, 405, validation, 403 for a file outside the
    allowed prefixes) and a ``DrainingServer`` (whose delay is ``limits.shutdown_delay_s``).

    It answers TF Serving's versioned routes, status and metadata (``tfserving_rest``),
    KServe v2's model routes with their versions (``v2_rest``), and the TF Serving
    predict request of ``model_name`` on each of ``predict_routes`` and its readiness on
    each of ``health_routes``: SageMaker's (``POST /invocations``, ``GET /ping``) and
    Vertex AI's custom-container routes.
    """

    def __init__(
        self,
        *args,
        host: str = LOOPBACK,
        limits: ServerLimits = DEFAULT_LIMITS,
        inflight: InflightBound | None = None,
        model_name: str = "",
        predict_routes: tuple[str, ...] = (),
        health_routes: tuple[str, ...] = (),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.limits = limits
        self.inflight = inflight or InflightBound(limits.max_inflight)
        self.model_name = model_name
        self.predict_routes = predict_routes
        self.health_routes = health_routes
        self._server = DrainingServer(self.config, self.dataplane, limits.shutdown_delay_s)

    @property
    def server(self) -> DrainingServer:
        return self._server

    def create_application(self) -> None:
        super().create_application()
        app = import_from_string(FASTAPI_APP_IMPORT_STRING)
        # Added last, so outermost: a refused request costs nothing further.
        app.add_middleware(RequestLimits, limits=self.limits, inflight=self.inflight)
        app.add_exception_handler(StarletteHTTPException, _http_error)
        app.add_exception_handler(RequestValidationError, _validation_error)
        app.add_exception_handler(ForbiddenUri, _forbidden_uri)
        tfserving_rest.add_routes(app, self.dataplane)
        v2_rest.add_routes(app, self.dataplane)
        v1 = V1Endpoints(self.dataplane, self.model_repository_extension)
        name = self.model_name

        async def predict(request: Request):
            return await v1.predict(name, request)

        async def health() -> JSONResponse:
            if await self.dataplane.model_ready(name):
                return JSONResponse({"status": "healthy"})
            return JSONResponse({"status": "not ready"}, 503)

        for route in self.predict_routes:
            app.add_api_route(route, predict, methods=["POST"], include_in_schema=False)
        for route in self.health_routes:
            app.add_api_route(route, health, methods=["GET"], include_in_schema=False)


class ModelLoadError(RuntimeError):
    """A model failed to load; the server stopped."""


class LoopbackModelServer(kserve.ModelServer):
    """kserve's ModelServer on one REST server bound to ``host`` (kserve binds 0.0.0.0),
    that listens before its models load: liveness answers at once, readiness once loaded.

    ``limits`` gives the REST server's bounds, ``grace_period`` (``grace_period_s``) and
    how often a model that serves its repository's every version looks there for new
    and removed ones (``file_system_poll_wait_seconds``, 0: never; ``repository_poll``).
    With a ``grpc_port`` (0: none) it also serves gRPC (``grpc_server``) on the same host,
    in the same event loop, with the same in-flight bound; ``predict_routes`` and
    ``health_routes`` are the REST server's.
    """

    def __init__(
        self,
        host: str = LOOPBACK,
        limits: ServerLimits = DEFAULT_LIMITS,
        grpc_port: int = 0,
        predict_routes: tuple[str, ...] = (),
        health_routes: tuple[str, ...] = (),
        **kwargs,
    ):
        kwargs.setdefault("workers", 1)
        # kserve's own gRPC server runs in another process with its own bounds: ours runs
        # beside the REST server instead.
        super().__init__(grace_period=limits.grace_period_s, enable_grpc=False, **kwargs)
        if self.workers != 1:
            raise ValueError("LoopbackModelServer runs one REST worker")
        self.host = host
        self.limits = limits
        self.grpc_port = grpc_port
        self.predict_routes = predict_routes
        self.health_routes = health_routes
        self.inflight = InflightBound(limits.max_inflight)
        self.dataplane = ServingDataPlane(model_registry=self.registered_models)
        self._load_error: BaseException | None = None
        self._grpc_server = None

    def start(self, models: list[kserve.Model]) -> None:
        """Serves ``models`` (not loaded yet) until SIGTERM/SIGINT; loads them meanwhile.

        Raises:
            ModelLoadError: when a model fails to load; the server stops at once then.
        """
        for model in models:
            self.register_model(model)
        [model] = models  # one model: the one /invocations and the gRPC services serve
        self._rest_server = LimitedRESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            host=self.host,
            limits=self.limits,
            inflight=self.inflight,
            model_name=model.name,
            predict_routes=self.predict_routes,
            health_routes=self.health_routes,
        )
        # uvicorn's own handlers take over while it serves and re-raise the signal once it
        # has stopped; kserve's then unload the models.
        self.register_signal_handler()
        asyncio.run(self._serve_and_load(models))
        if self._load_error is not None:
            raise ModelLoadError(f"the model failed to load: {self._load_error}") from (
                self._load_error
            )

    async def _serve_and_load(self, models: list[kserve.Model]) -> None:
        if self.grpc_port:  # built here: a gRPC aio server belongs to the running loop
            self._grpc_server = build_grpc_server(
                self.dataplane,
                self.model_repository_extension,
                models[0],
                self.host,
                self.grpc_port,
                self.limits,
                self.inflight,
            )
            await self._grpc_server.start()
        loading = asyncio.create_task(self._load(models))
        try:
            await self._rest_server.start()
        finally:
            loading.cancel()
            if self._grpc_server is not None:
                await self._grpc_server.stop(self.limits.grace_period_s)

    async def _load(self, models: list[kserve.Model]) -> None:
        server = self._rest_server.server
        while not server.started:  # load once listening; a port in use stops it first
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        try:
            for model in models:
                await asyncio.get_running_loop().run_in_executor(None, model.load)
        except Exception as e:
            log.exception("model failed to load: stopping the server")
            self._load_error = e
            server.should_exit = True
            return
        wait_s = self.limits.file_system_poll_wait_seconds
        if wait_s > 0:
            polled = [model for model in models if model.follows_repository]
            await asyncio.gather(*(RepositoryPoll(model).run(wait_s) for model in polled))


def serve(
    model_repository_dir: str,
    model_name: str,
    http_port: int = DEFAULT_HTTP_PORT,
    host: str = LOOPBACK,
    version: int | None = None,
    limits: ServerLimits = DEFAULT_LIMITS,
    grpc_port: int = 0,
    model_dir: str | None = None,
    allow_uri_prefixes: tuple[str, ...] = (),
    predict_routes: tuple[str, ...] = (SAGEMAKER_PREDICT_ROUTE,),
    health_routes: tuple[str, ...] = (SAGEMAKER_HEALTH_ROUTE,),
    version_labels: dict[str, int] | None = None,
) -> None:
    """Serves the model until SIGTERM or SIGINT; it loads while the server listens.

    The model is every version in ``model_repository_dir`` (only ``version`` when
    given; the latest answers requests that name none), which it polls for versions
    published and removed (``limits.file_system_poll_wait_seconds``), or, with an empty
    one, the SavedModel in ``model_dir``. ``version_labels`` maps TF Serving's version
    labels to versions (``stable``: the latest unless given). ``grpc_port`` 0 serves no gRPC;
    requests that name files are read under ``allow_uri_prefixes`` only (none: 403).

    Raises:
        FileNotFoundError: when the repository holds no such model or version (before
            the server starts).
        ValueError: for an allowed prefix that is neither an absolute path nor gs://, or
            a label of a version that is not served.
        ModelLoadError: when the model fails to load (the server stops).
    """
    model = ImageModel(
        model_name,
        model_repository_dir,
        version,
        limits,
        model_dir=model_dir,
        uri_reader=UriReader(allow_uri_prefixes),
        version_labels=version_labels,
    )
    model.resolve()
    LoopbackModelServer(
        host=host,
        http_port=http_port,
        limits=limits,
        grpc_port=grpc_port,
        predict_routes=predict_routes,
        health_routes=health_routes,
    ).start([model])
