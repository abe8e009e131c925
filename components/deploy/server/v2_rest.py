"""KServe v2's (Open Inference Protocol's) REST model routes, with versions::

    GET  /v2/models/<name>[/versions/<N>]          metadata: {"name", "versions",
                                                   "platform", "inputs", "outputs"}
    GET  /v2/models/<name>[/versions/<N>]/ready    {"name", "ready": true}; 503 not ready
    POST /v2/models/<name>[/versions/<N>]/infer    the infer request, answered by version N

(what ``tritonclient.http`` calls with ``model_version="N"``). kserve 0.21 registers the
versioned routes but answers them with ``NotImplementedError``; these replace its six
routes, so that a request with a version and one without take the same path: the same
body handling (``ServingDataPlane.decode``: JSON of any content type and the binary
tensor extension), checks and answer encoding (binary outputs too), the version being
handed to the model in the request's ``model_version``, as gRPC's ``ModelInfer`` hands
it. Without a version: the latest (metadata: ``versions`` lists every served version).
An unknown version answers 404, a version not loaded yet 503.
"""

from __future__ import annotations

# First: protocol imports kserve with sys.argv hidden from it.
from components.deploy.server import protocol  # noqa: F401

# isort: split
from fastapi import APIRouter, FastAPI, Request, Response
from kserve.constants.constants import V2_ROUTE_PREFIX, PredictorProtocol
from kserve.errors import ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.v2_datamodels import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
)
from kserve.protocol.rest.v2_endpoints import V2Endpoints

MODEL_ROUTE = "/models/{model_name}"
VERSION_ROUTE = MODEL_ROUTE + "/versions/{model_version}"


class VersionedV2Endpoints(V2Endpoints):
    """KServe's v2 endpoints with a model version (``ServingDataPlane``'s readiness and
    metadata take it; infer hands it to the model in the request)."""

    async def model_metadata(
        self, model_name: str, model_version: str | None = None
    ) -> ModelMetadataResponse:
        """The latest version's metadata, or that of the version the path names."""
        metadata = await self.dataplane.model_metadata(model_name, model_version)
        return ModelMetadataResponse.model_validate(metadata)

    async def model_ready(
        self, model_name: str, model_version: str | None = None
    ) -> ModelReadyResponse:
        """Whether the model, or the version the path names, answers (503 if not)."""
        if not await self.dataplane.model_ready(model_name, model_version=model_version):
            raise ModelNotReady(model_name)
        return ModelReadyResponse(name=model_name, ready=True)

    async def infer(
        self,
        raw_request: Request,
        raw_response: Response,
        model_name: str,
        request_body: InferenceRequest | bytes,
        model_version: str | None = None,
    ) -> InferenceResponse | Response:
        """KServe's infer, answered by the version the path names (the latest if none)."""
        # Predict requests are served while draining: no readiness check of the model.
        if not await self.dataplane.model_ready(model_name, True, model_version):
            raise ModelNotReady(model_name)
        headers = dict(raw_request.headers)
        infer_request, _ = self.dataplane.decode(
            request_body,
            headers,
            protocol_version=PredictorProtocol.REST_V2.value,
            model_name=model_name,
        )
        infer_request.model_version = model_version
        response, response_headers = await self.dataplane.infer(
            model_name=model_name, request=infer_request, headers=headers
        )
        response, encoded_headers = self.dataplane.encode(
            model_name=model_name, response=response, headers=headers, req_attributes={}
        )
        response_headers.update(encoded_headers)
        response_headers.pop("content-length", None)
        response_headers.pop("content-type", None)
        raw_response.headers.update(response_headers)
        if isinstance(response, bytes):  # binary outputs: the JSON header and the tensors
            raw_response.status_code = 200
            raw_response.body = response
            return raw_response
        return InferenceResponse.model_validate(response)


def add_routes(app: FastAPI, dataplane: DataPlane) -> None:
    """Adds KServe v2's model metadata, readiness and infer routes, with and without a
    version, to ``app`` ahead of KServe's own."""
    kserve_routes = list(app.router.routes)
    endpoints = VersionedV2Endpoints(dataplane)
    router = APIRouter(prefix=V2_ROUTE_PREFIX)
    for path in (MODEL_ROUTE, VERSION_ROUTE):
        router.add_api_route(
            path,
            endpoints.model_metadata,
            response_model=ModelMetadataResponse,
            methods=["GET"],
            include_in_schema=False,
        )
        router.add_api_route(
            path + "/ready",
            endpoints.model_ready,
            response_model=ModelReadyResponse,
            methods=["GET"],
            include_in_schema=False,
        )
        router.add_api_route(
            path + "/infer",
            endpoints.infer,
            response_model=None,
            methods=["POST"],
            include_in_schema=False,
        )
    app.include_router(router)
    # Routes match in order: these first.
    app.router.routes[:] = [*app.router.routes[len(kserve_routes) :], *kserve_routes]
