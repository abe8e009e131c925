"""TensorFlow Serving's gRPC API: ``tensorflow.serving.PredictionService``, on our model.

What clients of TF Serving call with the ``tensorflow-serving-api`` stubs (TF Serving's
default gRPC port is 8500; here it is ``--grpc-port``)::

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "image-classifier"          # signature_name: optional
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([jpeg_bytes, ...]))
    response = PredictionServiceStub(channel).Predict(request, timeout=10)
    tf.make_ndarray(response.outputs["label"])             # [b"triangle", ...]

(a detector's export: ``request.inputs["inputs"]``, and ``response.outputs`` holds
``detection_boxes``, ``detection_scores``, ...). ``Predict`` takes one DT_STRING tensor of
shape [N] (or [N, 1]) of encoded images, named as the signature's input
(``ImageModel.input_name``), checked like every other request (count, size, header), and
answers every signature output (or those ``output_filter`` names). ``GetModelMetadata``
answers the ``signature_def`` field, the export's own SignatureDefs. Classify, Regress and
MultiInference answer UNIMPLEMENTED (the export has a predict signature only). Errors
raise KServe's exceptions, which its gRPC interceptor turns into status codes:
INVALID_ARGUMENT, NOT_FOUND (another model or version), UNAVAILABLE (not loaded yet).
"""

from __future__ import annotations

# First: protocol imports kserve with sys.argv hidden from it.
from components.deploy.server.protocol import InvalidInput, check_count, check_image

# isort: split
import tensorflow as tf
from kserve.errors import ModelNotFound, ModelNotReady
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components.common import io
from components.common.serving import SIGNATURE
from components.deploy.server.model import ImageModel


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's PredictionService (Predict, GetModelMetadata) for one served model."""

    def __init__(self, model: ImageModel):
        self.model = model
        self._signature_defs = None  # the export's SignatureDefs, read once

    def _check_spec(self, spec) -> None:
        if spec.name != self.model.name:
            raise ModelNotFound(spec.name)
        if not self.model.ready:
            raise ModelNotReady(spec.name)
        if spec.HasField("version") and spec.version.value != self.model.version:
            raise ModelNotFound(f"{spec.name} version {spec.version.value}")
        if spec.version_label:
            raise ModelNotFound(f"{spec.name} label {spec.version_label!r} (none are defined)")
        if spec.signature_name not in ("", SIGNATURE):
            raise InvalidInput(
                f"unknown signature_name {spec.signature_name!r}; this server serves {SIGNATURE!r}"
            )

    def _answer_spec(self, spec) -> None:
        spec.name = self.model.name
        if self.model.version is not None:
            spec.version.value = self.model.version
        spec.signature_name = SIGNATURE

    async def Predict(self, request, context):  # noqa: N802 (the gRPC method's name)
        self._check_spec(request.model_spec)
        name = self.model.input_name
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
        outputs = await self.model.predict_images(images)
        wanted = list(request.output_filter) or sorted(outputs)
        unknown = sorted(set(wanted) - set(outputs))
        if unknown:
            raise InvalidInput(f"output_filter names {unknown}; the outputs are {sorted(outputs)}")
        response = predict_pb2.PredictResponse()
        self._answer_spec(response.model_spec)
        for name in wanted:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    async def GetModelMetadata(self, request, context):  # noqa: N802
        self._check_spec(request.model_spec)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidInput(
                f"metadata_field {fields}: signature_def is the only metadata field answered"
            )
        if self._signature_defs is None:
            saved_model = saved_model_pb2.SavedModel()
            saved_model.ParseFromString(
                io.read_bytes(io.join(self.model.resolve(), "saved_model.pb"))
            )
            self._signature_defs = saved_model.meta_graphs[0].signature_def
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in self._signature_defs.items():
            if not name.startswith("__"):  # internal ones, e.g. __saved_model_init_op
                signatures.signature_def[name].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._answer_spec(response.model_spec)
        response.metadata["signature_def"].Pack(signatures)
        return response
