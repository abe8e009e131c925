"""TensorFlow Serving's REST API beyond the plain predict route: versions, labels, model
status and metadata, as TF Serving answers them::

    POST /v1/models/<name>[/versions/<N>|/labels/<label>]:predict   (the predict body)
    GET  /v1/models/<name>[/versions/<N>|/labels/<label>]           status
         200 {"name": ..., "ready": true,                           (KServe v1's fields)
              "model_version_status": [{"version": "2", "state": "AVAILABLE",
                                        "status": {"error_code": "OK", "error_message": ""}},
                                       ...]}                        (every version, or one)
    GET  /v1/models/<name>[/versions/<N>|/labels/<label>]/metadata  metadata
         200 {"model_spec": {"name": ..., "version": "2", "signature_name": ...},
              "metadata": {"signature_def": {"signature_def": {"serving_default": ...}}}}

Without a version or label a request goes to the latest version (metadata: the latest's;
status: every version's). Labels are the server's ``--version-label`` options, ``stable``
being the latest unless given. An unknown version or label answers 404, a model still
loading (or a server draining, for the status route, which is a readiness probe) 503.
``POST /v1/models/<name>:predict`` itself is KServe's route, on the latest version.
"""

from __future__ import annotations

# First: protocol imports kserve with sys.argv hidden from it.
from components.deploy.server import protocol  # noqa: F401

# isort: split
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kserve.errors import ModelNotReady
from kserve.protocol.dataplane import DataPlane
from tensorflow_serving.apis import get_model_metadata_pb2

from components.deploy.server.model import ImageModel, parse_version
from components.deploy.server.tfserving import metadata_response, rest_json, status_response

MODEL_ROUTE = "/v1/models/{model_name}"
# The version selectors, path suffixes: none (the latest), a version number, a label.
SELECTORS = ("", "/versions/{version}", "/labels/{label}")


def _selection(request: Request) -> tuple[str, int | None, str]:
    """The model name, version number and label a route's path names."""
    params = request.path_params
    name = params["model_name"]
    return name, parse_version(name, params.get("version")), params.get("label", "")


def add_routes(app: FastAPI, dataplane: DataPlane) -> None:
    """Adds TF Serving's versioned predict, status and metadata routes to ``app``, ahead
    of KServe's routes, so that its status route (``GET /v1/models/<name>``,
    ``{"name", "ready"}``) is this one."""
    kserve_routes = list(app.router.routes)

    async def status(request: Request) -> JSONResponse:
        name, version, label = _selection(request)
        if not await dataplane.model_ready(name):
            raise ModelNotReady(name)
        model: ImageModel = dataplane.model_registry.get_model(name)
        response = status_response(model, version, label)
        return JSONResponse({"name": name, "ready": True, **rest_json(response)})

    async def metadata(request: Request) -> JSONResponse:
        name, version, label = _selection(request)
        model: ImageModel = await dataplane.get_model(name)
        response = metadata_response(model, model.served(version, label))
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return JSONResponse(
            {
                "model_spec": rest_json(response.model_spec),
                "metadata": {"signature_def": rest_json(signatures)},
            }
        )

    async def predict(request: Request) -> JSONResponse:
        name, version, label = _selection(request)
        model: ImageModel = await dataplane.get_model(name)
        served = model.served(version, label)
        payload, _ = dataplane.decode(await request.body(), dict(request.headers.items()))
        answer = await model.predict(await model.read_request(payload, served.number))
        return JSONResponse(answer)

    for selector in SELECTORS:
        path = MODEL_ROUTE + selector
        app.add_api_route(path, status, methods=["GET"], include_in_schema=False)
        app.add_api_route(path + "/metadata", metadata, methods=["GET"], include_in_schema=False)
        if selector:  # the plain predict route is KServe's
            app.add_api_route(path + ":predict", predict, methods=["POST"], include_in_schema=False)
    # Routes match in order: these first.
    app.router.routes[:] = [*app.router.routes[len(kserve_routes) :], *kserve_routes]
