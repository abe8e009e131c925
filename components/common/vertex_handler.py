"""The Vertex AI endpoint handler of ``components.common.remote_handler`` (see there): Beam's
``VertexAIModelHandlerJSON`` sending encoded images the way Vertex AI's prebuilt
TensorFlow container and the suite's custom container take them, and answering class
probabilities in label order, or a detector's outputs.

Its own module because importing Beam's Vertex AI handler imports the Vertex AI SDK
(seconds): ``remote_handler.remote_handler`` imports it only for a Vertex endpoint.

What it changes in Beam's handler:

* instances: each image as ``{"b64": "<base64>"}`` (TF Serving's row format of the
  export's one input, ``image_bytes``), not the element itself;
* each prediction (``{"probabilities": [...], "class_index", "label", "score"}``, the
  export's signature outputs) becomes the float32 probabilities, checked against the
  labels; a detector's (``{"detection_boxes", "detection_classes", "detection_scores",
  "num_detections", "detection_labels", ...}``) its outputs, checked the same way; and an
  answer with another number of predictions than images is an error, not a shorter result
  (Beam's pairs them with ``zip``): ``remote_handler.prediction_results``, as for TF
  Serving;
* errors: 429 and ``RESOURCE_EXHAUSTED``, 502, 503, 504 / ``DEADLINE_EXCEEDED``, transport
  errors are ``RemoteUnavailable`` (retried), a 400 / ``INVALID_ARGUMENT`` (e.g. a bad
  image, or a request over the 1.5 MB a public endpoint takes) is ``RequestRejected`` (the
  batch goes again image by image), other API errors ``RemoteError``; Beam's retries 500
  too, which here is an error answer, not retried;
* ``timeout_s`` on each request, and the remote counters (``remote_handler.counted_request``).

Vertex AI returns no label list either: the caller passes the labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.vertex_ai_inference import VertexAIModelHandlerJSON

from components.common.remote_handler import (
    DEFAULT_NUM_RETRIES,
    DEFAULT_THROTTLE_DELAY_S,
    DEFAULT_TIMEOUT_S,
    VERTEX_ENDPOINT,
    RemoteError,
    RemoteUnavailable,
    RequestRejected,
    _RetryCounter,
    check_options,
    counted_request,
    instances,
    is_retryable,
    prediction_results,
)


@dataclasses.dataclass(frozen=True)
class VertexClient:
    """The ``aiplatform.Endpoint`` and the per-thread retry bookkeeping of its requests.

    A class, not a NamedTuple: RunInference keeps the loaded "model" in Beam's ``Shared``
    handle, which holds it by weak reference, and a tuple cannot be weakly referenced.
    """

    endpoint: Any
    retries: _RetryCounter


def classify_error(error: Exception) -> Exception:
    """The remote_handler error of a Vertex AI SDK error (the error itself when it is
    none of the API's or transport's)."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(
        error,
        api.TooManyRequests | api.ServiceUnavailable | api.BadGateway | api.GatewayTimeout,
    ):
        return RemoteUnavailable(f"{type(error).__name__}: {error}")
    if isinstance(error, api.RetryError | auth.TransportError | ConnectionError | TimeoutError):
        return RemoteUnavailable(f"{type(error).__name__}: {error}")
    if isinstance(error, api.BadRequest):
        return RequestRejected(400, getattr(error, "message", None) or str(error))
    if isinstance(error, api.GoogleAPICallError):
        return RemoteError(f"{type(error).__name__}: {error}")
    return error


class VertexEndpointHandler(VertexAIModelHandlerJSON):
    """Encoded images to a Vertex AI endpoint, one ``predict`` call per batch; each
    result's inference is the image's float32 class probabilities in label order, or a
    detector's outputs (``remote_handler.inference_of``).

    Made on the launcher, it checks (as Beam's handler does) that the endpoint exists and
    has a model deployed, with the caller's Google Cloud credentials.
    """

    def __init__(
        self,
        endpoint: str,
        labels: Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        num_retries: int = DEFAULT_NUM_RETRIES,
        throttle_delay_s: float = DEFAULT_THROTTLE_DELAY_S,
        metrics_namespace: str = "inference",
    ):
        """Configures the handler.

        Args:
            endpoint: ``projects/<project>/locations/<location>/endpoints/<id>``.
            labels: The model's labels, in class-index order (checked against each answer).
            timeout_s: Longest wait for one answer.
            num_retries: Retries of a request that got no answer, with Beam's backoff.
            throttle_delay_s: Beam's adaptive throttling delay.
            metrics_namespace: Namespace of the counters (the stage's name).
        """
        match = VERTEX_ENDPOINT.fullmatch(endpoint)
        if not match:
            raise ValueError(
                f"not a Vertex AI endpoint (projects/<p>/locations/<l>/endpoints/<id>): {endpoint!r}"
            )
        check_options(labels, timeout_s, num_retries)
        project, location, endpoint_id = match.groups()
        super().__init__(
            endpoint_id=endpoint_id,
            project=project,
            location=location,
            num_retries=num_retries,
            throttle_delay_secs=throttle_delay_s,
        )
        self.retry_filter = is_retryable
        self.endpoint = endpoint
        self.labels = list(labels)
        self.timeout_s = timeout_s
        self.metrics_namespace = metrics_namespace

    def create_client(self) -> VertexClient:  # type: ignore[override]
        """The endpoint (checked again on the worker) and its retry bookkeeping."""
        return VertexClient(super().create_client(), _RetryCounter())

    def request(
        self,
        batch: Sequence[bytes],
        model: VertexClient,  # type: ignore[override]
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """One ``predict`` call of the batch (Beam's ``run_inference`` retries it)."""
        with counted_request(self, model.retries, batch):
            try:
                prediction = model.endpoint.predict(
                    instances=instances(batch), parameters=inference_args, timeout=self.timeout_s
                )
            except Exception as e:
                error = classify_error(e)
                if error is e:
                    raise
                raise error from e
        return prediction_results(
            batch,
            list(prediction.predictions),
            self.labels,
            f"the endpoint {self.endpoint}",
            prediction.deployed_model_id,
        )

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        """Rejects inference args: the serving signature takes none."""
        if inference_args:
            raise ValueError(f"the serving signature takes no inference_args: {inference_args}")
