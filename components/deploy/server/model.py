"""The served model: one version of an exported image classifier, as a ``kserve.Model``."""

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

from components.common import model_repository, serving
from components.deploy.server.batching import Batcher
from components.deploy.server.limits import DEFAULT_LIMITS, ServerLimits

log = logging.getLogger(__name__)

MODEL_CALL_IMAGES = Histogram(
    "image_classifier_model_call_images",
    "Images per call of the serving signature (a batch of one or more requests)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


class ImageClassifierModel(kserve.Model):
    """Serves one version of an exported image classifier from a model repository.

    ``limits`` gives the request checks (``max_instances``, ``max_image_bytes``) and the
    batching (``batch_max_size``, 0 for none, and ``batch_timeout_ms``).
    """

    def __init__(
        self,
        name: str,
        repository: str,
        version: int | None = None,
        limits: ServerLimits = DEFAULT_LIMITS,
    ):
        super().__init__(name)
        self.repository = repository
        self.version = version
        self.model_dir: str | None = None
        self.limits = limits
        self._loaded = None
        self._serve = None
        self._batcher: Batcher | None = None

    def resolve(self) -> str:
        """Finds the version directory to serve (cheap: no TensorFlow); returns it.

        Raises:
            FileNotFoundError: when the repository holds no such version.
        """
        if self.model_dir is None:
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
        self._serve = self._loaded.signatures[serving.SIGNATURE]
        if self.limits.batch_max_size > 0:
            self._batcher = Batcher(
                self.run_signature,
                self.limits.batch_max_size,
                self.limits.batch_timeout_ms / 1000.0,
            )
        log.info("loaded model %s version %s from %s", self.name, self.version, model_dir)
        self.ready = True
        return self.ready

    def run_signature(self, images: list[bytes]) -> dict[str, np.ndarray]:
        """One call of the serving signature on encoded images (blocking)."""
        MODEL_CALL_IMAGES.observe(len(images))
        try:
            outputs = self._serve(**{serving.INPUT_NAME: tf.constant(images, tf.string)})
        except tf.errors.InvalidArgumentError as e:
            # The header looked right but the image does not decode (e.g. truncated).
            raise InvalidInput(decode_error_message(images, e)) from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    async def preprocess(
        self, payload: Any, headers: dict[str, str] | None = None
    ) -> PredictRequest:
        if isinstance(payload, InferRequest):
            return parse_v2_request(payload, self.limits.max_instances, self.limits.max_image_bytes)
        return parse_request(payload, self.limits.max_instances, self.limits.max_image_bytes)

    async def predict(
        self, payload: PredictRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        if self._batcher is not None:
            outputs = await self._batcher.predict(payload.images)
        else:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(None, self.run_signature, payload.images)
        return format_answer(payload, outputs, self.name, self.version)

    def get_input_types(self) -> list[dict]:
        return [{"name": serving.INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        if self._serve is None:
            return []
        specs = self._serve.structured_outputs
        return [
            {
                "name": name,
                "datatype": from_np_dtype(np.dtype(specs[name].dtype.as_numpy_dtype)),
                "shape": [-1 if d is None else d for d in specs[name].shape.as_list()],
            }
            for name in sorted(specs)
        ]
