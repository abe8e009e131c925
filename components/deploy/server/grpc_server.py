"""The gRPC server: KServe's v2 ``GRPCInferenceService`` and TF Serving's
``PredictionService`` and ``ModelService`` on one port, with the REST server's bounds.

Both services share the REST server's in-flight bound (``InflightBound``: predict calls
beyond it get UNAVAILABLE at once, as REST answers 503), its body bound as gRPC's
largest message (RESOURCE_EXHAUSTED beyond it, from gRPC itself), and the model's checks
and batching. KServe's exception interceptor maps errors to status codes
(INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE). The server runs in the REST server's event
loop, and starts listening before the model loads (calls get UNAVAILABLE meanwhile).

KServe's v2 calls take a model version as Triton's clients send it: ``ModelInfer``'s
``model_version`` (the model reads it from the request), ``ModelReady``'s and
``ModelMetadata``'s ``version`` (``VersionedInferenceServicer``); NOT_FOUND for a version
that is not served.
"""

from __future__ import annotations

# First: protocol imports kserve with sys.argv hidden from it.
from components.deploy.server import protocol  # noqa: F401

# isort: split
import grpc
from grpc import aio
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as v2_pb, grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from prometheus_client import Counter
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from components.deploy.server.limits import InflightBound, ServerLimits
from components.deploy.server.model import ImageModel
from components.deploy.server.tfserving import ModelService, PredictionService

# The calls that run the model; metadata and health calls are never bounded.
BOUNDED_METHODS = (
    "/inference.GRPCInferenceService/ModelInfer",
    "/tensorflow.serving.PredictionService/Predict",
)

REJECTED_CALLS = Counter(
    "image_classifier_rejected_grpc_calls",
    "gRPC calls refused before the model saw them, by reason",
    ["reason"],
)


class InflightInterceptor(aio.ServerInterceptor):
    """Refuses model calls beyond the in-flight bound with UNAVAILABLE, at once."""

    def __init__(self, bound: InflightBound):
        self.bound = bound

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.unary_unary is None
            or handler_call_details.method not in BOUNDED_METHODS
        ):
            return handler
        call, bound = handler.unary_unary, self.bound

        async def bounded(request, context):
            if not bound.enter():
                REJECTED_CALLS.labels("overloaded").inc()
                await context.abort(grpc.StatusCode.UNAVAILABLE, bound.busy_message())
            try:
                return await call(request, context)
            finally:
                bound.leave()

        return grpc.unary_unary_rpc_method_handler(
            bounded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class VersionedInferenceServicer(InferenceServicer):
    """KServe's v2 gRPC service, whose ModelReady and ModelMetadata answer the version
    the request names (``ServingDataPlane``), or the latest when none."""

    async def ModelReady(self, request, context):  # noqa: N802 (the gRPC method's name)
        ready = await self._data_plane.model_ready(request.name, model_version=request.version)
        return v2_pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request, context):  # noqa: N802
        metadata = await self._data_plane.model_metadata(request.name, request.version)
        return v2_pb.ModelMetadataResponse(**metadata)


def listen_address(host: str, port: int) -> str:
    """``host:port`` as gRPC takes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build_grpc_server(
    dataplane: DataPlane,
    model_repository_extension: ModelRepositoryExtension,
    model: ImageModel,
    host: str,
    port: int,
    limits: ServerLimits,
    inflight: InflightBound,
) -> aio.Server:
    """The gRPC server with its three services, bound to ``host:port`` (not started yet).

    Raises:
        RuntimeError: when the port cannot be bound.
    """
    largest = limits.max_body_bytes or -1
    server = aio.server(
        interceptors=(InflightInterceptor(inflight), ExceptionToStatusInterceptor()),
        options=[
            ("grpc.max_receive_message_length", largest),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        VersionedInferenceServicer(dataplane, model_repository_extension), server
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(model), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(model), server)
    server.add_insecure_port(listen_address(host, port))
    return server
