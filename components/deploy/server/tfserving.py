"""TensorFlow Serving's gRPC API on our model: ``tensorflow.serving.PredictionService``
and ``ModelService``, and the protos its REST API answers too.

What clients of TF Serving call with the ``tensorflow-serving-api`` stubs (TF Serving's
default gRPC port is 8500; here it is ``--grpc-port``)::

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "image-classifier"          # signature_name: optional
    request.model_spec.version.value = 2                  # or version_label = "stable";
                                                          # neither: the latest version
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([jpeg_bytes, ...]))
    response = PredictionServiceStub(channel).Predict(request, timeout=10)
    tf.make_ndarray(response.outputs["label"])             # [b"triangle", ...]

(a detector's export: ``request.inputs["inputs"]``, and ``response.outputs`` holds
``detection_boxes``, ``detection_scores``, ...). ``Predict`` takes one DT_STRING tensor of
shape [N] (or [N, 1]) of encoded images, named as the version's signature input, checked
like every other request (count, size, header), and answers every signature output (or
those ``output_filter`` names), with the version that answered in ``model_spec``.
``GetModelMetadata`` answers the ``signature_def`` field, the version's own SignatureDefs
(``metadata_response``). ``ModelService.GetModelStatus`` answers each served version's
state (``status_response``: every version, or the one the spec names). Classify, Regress,
MultiInference and HandleReloadConfigRequest answer UNIMPLEMENTED (the export has a
predict signature only; versions come from the repository, read at start-up and
polled, ``repository_poll``). Errors raise KServe's
exceptions, which its gRPC interceptor turns into status codes: INVALID_ARGUMENT,
NOT_FOUND (another model, version or label), UNAVAILABLE (not loaded yet).

The REST routes (``tfserving_rest``) answer the same protos as TF Serving's REST API
does, as JSON (``rest_json``).
"""

from __future__ import annotations

# First: protocol imports kserve with sys.argv hidden from it.
from components.deploy.server.protocol import InvalidInput, check_count, check_image

# isort: split
import tensorflow as tf
from google.protobuf import json_format
from kserve.errors import ModelNotFound, ModelNotReady
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components.common.serving import SIGNATURE
from components.deploy.server.model import ImageModel, ServedVersion

_State = get_model_status_pb2.ModelVersionStatus.State


def served_version(model: ImageModel, spec) -> ServedVersion:
    """The version a ``ModelSpec`` names (``version``, ``version_label``, or neither: the
    latest), once the model is loaded.

    Raises:
        ModelNotFound: for another model, or a version or label that is not served.
        ModelNotReady: while the model loads.
        InvalidInput: for a signature other than ``serving_default``.
    """
    if spec.name != model.name:
        raise ModelNotFound(spec.name)
    if not model.ready:
        raise ModelNotReady(spec.name)
    if spec.signature_name not in ("", SIGNATURE):
        raise InvalidInput(
            f"unknown signature_name {spec.signature_name!r}; this server serves {SIGNATURE!r}"
        )
    version = spec.version.value if spec.HasField("version") else None
    return model.served(version, spec.version_label)


def _answer_spec(spec, model: ImageModel, served: ServedVersion) -> None:
    spec.name = model.name
    spec.version.value = served.number
    spec.signature_name = SIGNATURE


def metadata_response(
    model: ImageModel, served: ServedVersion
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """A version's ``GetModelMetadataResponse``: its SignatureDefs (without the internal
    ones, e.g. ``__saved_model_init_op``) under ``metadata["signature_def"]``."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in served.signature_defs().items():
        if not name.startswith("__"):
            signatures.signature_def[name].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _answer_spec(response.model_spec, model, served)
    response.metadata["signature_def"].Pack(signatures)
    return response


def status_response(
    model: ImageModel, version: int | None = None, label: str = ""
) -> get_model_status_pb2.GetModelStatusResponse:
    """The state of every served version, or of the one ``version`` or ``label`` names:
    AVAILABLE once loaded, LOADING before (TF Serving's states), status OK.

    Raises:
        ModelNotFound: for a version or label that is not served.
    """
    model.resolve()
    if version is None and not label:
        chosen = list(model.versions.values())
    else:
        chosen = [model.served(version, label)]
    response = get_model_status_pb2.GetModelStatusResponse()
    for served in chosen:
        status = response.model_version_status.add(
            version=served.number,
            state=_State.AVAILABLE if served.available else _State.LOADING,
        )
        status.status.SetInParent()  # error_code OK, as TF Serving writes it
    return response


def rest_json(message) -> dict:
    """A proto as TF Serving's REST API writes it: field names as in the proto, fields
    at their default values included (``"error_code": "OK"``), int64 as strings."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's PredictionService (Predict, GetModelMetadata) for one served model."""

    def __init__(self, model: ImageModel):
        self.model = model

    async def Predict(self, request, context):  # noqa: N802 (the gRPC method's name)
        served = served_version(self.model, request.model_spec)
        name = served.input_name
        if set(request.inputs) != {name}:
            raise InvalidInput(f"expected one input named {name!r}, got {sorted(request.inputs)}")
        tensor = request.inputs[name]
        if tensor.dtype != types_pb2.DT_STRING:
            raise InvalidInput(
                f"input {name!r} must be DT_STRING (encoded images), not "
                f"{types_pb2.DataType.Name(tensor.dtype)}"
            )
        images = list(tensor.string_val)
        shape = [dim.size for dim in tensor.tensor_shape.dim]
        if not images or shape not in ([len(images)], [len(images), 1]):
            raise InvalidInput(
                f"input {name!r}: expected shape [N] with N encoded images, "
                f"got shape {shape} with {len(images)} strings"
            )
        check_count(len(images), self.model.limits.max_instances)
        for i, image in enumerate(images):
            if not image:
                raise InvalidInput(f"instance {i}: the image is empty")
            check_image(image, i, self.model.limits.max_image_bytes)
        outputs = await self.model.predict_images(images, served.number)
        wanted = list(request.output_filter) or sorted(outputs)
        unknown = sorted(set(wanted) - set(outputs))
        if unknown:
            raise InvalidInput(f"output_filter names {unknown}; the outputs are {sorted(outputs)}")
        response = predict_pb2.PredictResponse()
        _answer_spec(response.model_spec, self.model, served)
        for name in wanted:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    async def GetModelMetadata(self, request, context):  # noqa: N802
        served = served_version(self.model, request.model_spec)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidInput(
                f"metadata_field {fields}: signature_def is the only metadata field answered"
            )
        return metadata_response(self.model, served)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """TF Serving's ModelService: GetModelStatus for one served model (answered while it
    loads too: its versions are LOADING then)."""

    def __init__(self, model: ImageModel):
        self.model = model

    async def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        if spec.name != self.model.name:
            raise ModelNotFound(spec.name)
        version = spec.version.value if spec.HasField("version") else None
        return status_response(self.model, version, spec.version_label)
