"""The served model: one version of an exported image model, as a ``kserve.Model``.

The server knows no task: what a request names its input, and what the answer holds,
come from the export's ``serving_default`` signature once it is loaded
(``structured_input_signature``: one string input of encoded images, whatever its name;
``structured_outputs``: every output, with its dtype and shape). A classifier's export
(``image_bytes`` -> ``probabilities``, ``label``, ...) and a detector's (``inputs`` ->
``detection_boxes``, ``detection_labels``, ...) are served alike.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

# First: protocol imports kserve with sys.argv hidden from it (kserve parses sys.argv when
# it is imported); kserve is only imported below, after it.
from components.deploy.server.protocol import (
    PredictRequest,
    decode_error_message,
    format_answer,
    parse_request,
    parse_v2_request,
)

# isort: split
import kserve
import numpy as np
import tensorflow as tf
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse
from kserve.utils.numpy_codec import from_np_dtype
from prometheus_client import Histogram

from components.common import io, model_repository
from components.common.serving import SIGNATURE
from components.deploy.server.batching import Batcher
from components.deploy.server.limits import DEFAULT_LIMITS, ServerLimits
from components.deploy.server.uris import UriReader

log = logging.getLogger(__name__)

MODEL_CALL_IMAGES = Histogram(
    "image_classifier_model_call_images",
    "Images per call of the serving signature (a batch of one or more requests)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


def image_input(signature) -> tuple[str, tf.TensorSpec]:
    """The name and spec of a signature's one input of encoded images (a string vector).

    Raises:
        ValueError: for a signature that takes something else (the server serves only
            models of encoded images).
    """
    _, specs = signature.structured_input_signature  # a signature's inputs are keywords
    if len(specs) == 1:
        [(name, spec)] = specs.items()
        if spec.dtype == tf.string and spec.shape.rank == 1:
            return name, spec
    described = {name: f"{spec.dtype.name} {spec.shape}" for name, spec in specs.items()}
    raise ValueError(
        f"the {SIGNATURE!r} signature must take one string [batch] input of encoded images; "
        f"it takes {described}"
    )


class ImageModel(kserve.Model):
    """Serves one version of an exported image model (a classifier, a detector: any
    whose ``serving_default`` takes encoded images) from a model repository, or the
    SavedModel directory ``model_dir`` (then ``repository`` is empty; Vertex AI's
    ``AIP_STORAGE_URI``, SageMaker's ``/opt/ml/model``).

    ``input_name`` is the signature's input (None until loaded): requests name it.

    ``limits`` gives the request checks (``max_instances``, ``max_image_bytes``) and the
    batching (``batch_max_size``, 0 for none, and ``batch_timeout_ms``); ``uri_reader``
    reads the files requests name (by default none: such requests get 403).
    """

    def __init__(
        self,
        name: str,
        repository: str = "",
        version: int | None = None,
        limits: ServerLimits = DEFAULT_LIMITS,
        model_dir: str | None = None,
        uri_reader: UriReader | None = None,
    ):
        super().__init__(name)
        if bool(repository) == bool(model_dir):
            raise ValueError("serve a model repository or a SavedModel directory, not both")
        self.repository = repository
        self.version = version
        self.model_dir: str | None = model_dir
        self.limits = limits
        self.uri_reader = uri_reader or UriReader()
        self._loaded = None
        self._serve = None
        self.input_name: str | None = None
        self._batcher: Batcher | None = None

    def resolve(self) -> str:
        """Finds the version directory to serve (cheap: no TensorFlow); returns it.

        Raises:
            FileNotFoundError: when the repository holds no such version, or
                ``model_dir`` no SavedModel.
        """
        if not self.repository:
            if not io.exists(io.join(self.model_dir, "saved_model.pb")):
                raise FileNotFoundError(f"no SavedModel (saved_model.pb) in {self.model_dir}")
            if self.version is None:
                self.version = model_repository.version_of(self.model_dir)
        elif self.model_dir is None:
            if self.version is None:
                self.version, self.model_dir = model_repository.latest_version(
                    self.repository, self.name
                )
            else:
                self.model_dir = model_repository.version_dir(
                    self.repository, self.name, self.version
                )
        return self.model_dir

    def load(self) -> bool:
        """Loads the SavedModel (seconds); readiness turns true when it returns."""
        model_dir = self.resolve()
        # Keep the loaded object: its variables must outlive the signature function.
        self._loaded = tf.saved_model.load(model_dir)
        if SIGNATURE not in self._loaded.signatures:
            raise ValueError(
                f"the SavedModel in {model_dir} has no {SIGNATURE!r} signature, only "
                f"{sorted(self._loaded.signatures)}"
            )
        serve = self._loaded.signatures[SIGNATURE]
        self.input_name, _ = image_input(serve)
        self._serve = serve
        if self.limits.batch_max_size > 0:
            self._batcher = Batcher(
                self.run_signature,
                self.limits.batch_max_size,
                self.limits.batch_timeout_ms / 1000.0,
            )
        log.info(
            "loaded model %s version %s from %s: input %r, outputs %s",
            self.name,
            self.version,
            model_dir,
            self.input_name,
            sorted(self._serve.structured_outputs),
        )
        self.ready = True
        return self.ready

    def run_signature(self, images: list[bytes]) -> dict[str, np.ndarray]:
        """One call of the serving signature on encoded images (blocking)."""
        MODEL_CALL_IMAGES.observe(len(images))
        try:
            outputs = self._serve(**{self.input_name: tf.constant(images, tf.string)})
        except tf.errors.InvalidArgumentError as e:
            # The header looked right but the image does not decode (e.g. truncated).
            raise InvalidInput(decode_error_message(images, e)) from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    async def preprocess(
        self, payload: Any, headers: dict[str, str] | None = None
    ) -> PredictRequest:
        limits = self.limits
        if isinstance(payload, InferRequest):
            return parse_v2_request(
                payload, self.input_name, limits.max_instances, limits.max_image_bytes
            )
        request = parse_request(
            payload, self.input_name, limits.max_instances, limits.max_image_bytes
        )
        if request.uris:
            await asyncio.get_running_loop().run_in_executor(
                None, self.uri_reader.read_request, request, self.limits.max_image_bytes
            )
        return request

    async def predict_images(self, images: list[bytes]) -> dict[str, np.ndarray]:
        """The signature's outputs for checked images, batched with other requests'."""
        if self._batcher is not None:
            return await self._batcher.predict(images)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.run_signature, images)

    async def predict(
        self, payload: PredictRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        outputs = await self.predict_images(payload.images)
        return format_answer(payload, outputs, self.name, self.version)

    def get_input_types(self) -> list[dict]:
        if self._serve is None:
            return []
        name, spec = image_input(self._serve)
        return [_tensor_type(name, spec)]

    def get_output_types(self) -> list[dict]:
        if self._serve is None:
            return []
        specs = self._serve.structured_outputs
        return [_tensor_type(name, specs[name]) for name in sorted(specs)]


def _tensor_type(name: str, spec: tf.TensorSpec) -> dict:
    """A tensor as KServe's v2 metadata describes it (``BYTES`` for strings, -1 for the
    batch and other unknown dimensions)."""
    return {
        "name": name,
        "datatype": from_np_dtype(np.dtype(spec.dtype.as_numpy_dtype)),
        "shape": [-1 if d is None else d for d in spec.shape.as_list()],
    }
