"""Beam RunInference handlers that call a deployed model instead of loading it (batch and
streaming prediction share them).

Two kinds of endpoint, told apart by ``endpoint_kind``:

* a TensorFlow Serving REST endpoint, ``http(s)://host:port/v1/models/<name>`` (the local
  model server, KServe's TensorFlow predictor, TF Serving itself; ``.../versions/<n>`` or
  a URL ending in ``:predict`` also do): ``TFServingRESTHandler`` posts a batch of images
  as ``{"instances": [{"b64": ...}, ...]}`` to ``<endpoint>:predict`` and reads
  ``{"predictions": [{"probabilities": [...], "class_index", "label", ...}, ...]}``;
* a Vertex AI endpoint, ``projects/<p>/locations/<l>/endpoints/<id>``:
  ``components.common.vertex_handler.VertexEndpointHandler``, Beam's
  ``VertexAIModelHandlerJSON`` with the same instances (imported only for such an endpoint:
  the Vertex AI SDK takes seconds to import).

Both are Beam ``RemoteModelHandler``s: one request per batch, Beam's retries with
exponential backoff (``num_retries``; Beam 2.77 starts at 5 s, doubles, and fuzzes each wait
to 50-100% of it: its first wait is not configurable) on the errors that pass
``is_retryable``, i.e. ``RemoteUnavailable`` (HTTP 429, 502, 503, 504, a refused or broken
connection, no answer within ``timeout_s``), and Beam's client-side adaptive throttling
(``throttle_delay_s``). A 400 or 413 (``RequestRejected``: an image of the batch the server
will not take) and any other error answer (``RemoteError``) are not retried.

Beam raises the last error once the retries are spent, and a ``RemoteModelHandler`` may not
override ``run_inference`` to catch it, so ``RemoteImageHandler`` wraps one and turns what
went wrong into data, as ``model_handler.SavedModelHandler`` does: each element of a batch
that got no answer comes back with an ``InferenceFailure`` as its inference
(``remote_unavailable`` after the retries, ``remote_error`` for another error answer), and
a rejected batch is sent again image by image, so that the good images still get their
predictions and only a bad one fails (``undecodable_image`` for a 400,
``image_too_large`` for a 413, with the server's message as the detail). Nothing is lost
and the pipeline does not crash; the stage decides with its ``max_error_fraction``.

The results have the in-worker handler's shape: ``PredictionResult(image bytes, float32
probabilities in label order | a detector's outputs | InferenceFailure)`` (``inference_of``).

Labels: neither TF Serving's REST API (its model metadata has the signature, not the label
vocabulary) nor Vertex AI says what the classes are, so the caller passes the label list
(the stage reads it from a label file or the exported model's ``assets.extra/labels.txt``).
Each answer is checked against it: as many probabilities as labels, and the ``label`` the
endpoint names for its ``class_index`` must be that label (a detector's: the deploy step's
``check_answer``); a mismatch (another model behind the endpoint) raises
``LabelMismatch`` and stops the pipeline rather than write wrong labels.

Counters, in the caller's namespace: ``remote_requests`` (every request sent, retries
included), ``remote_retries``, ``remote_failures`` (requests given up on: retries spent or
an error answer), ``remote_failed_images`` (images without an answer for that reason),
``fallback_batches`` and ``fallback_images`` (batches sent again image by image).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RemoteModelHandler

from components.classification import signature
from components.common.model_handler import (
    IMAGE_TOO_LARGE,
    UNDECODABLE_IMAGE,
    EncodedImageHandler,
    InferenceFailure,
)
from components.detection import predictions as detection_predictions

REMOTE_UNAVAILABLE = "remote_unavailable"
REMOTE_ERROR = "remote_error"

REST = "rest"
VERTEX = "vertex"
VERTEX_ENDPOINT = re.compile(r"projects/([^/]+)/locations/([^/]+)/endpoints/([^/]+)")
# A TF Serving REST model URL: /v1/models/<name>, optionally /versions/<n> or /labels/<l>.
_REST_MODEL_PATH = re.compile(r".*/v1/models/[^/:]+(/versions/\d+|/labels/[^/:]+)?")

RETRYABLE_STATUS = (429, 502, 503, 504)
REJECTED_STATUS = {400: UNDECODABLE_IMAGE, 413: IMAGE_TOO_LARGE}
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_NUM_RETRIES = 5
# Beam's default: how long adaptive throttling holds a request back when recent requests
# mostly failed (it looks at the last second of requests).
DEFAULT_THROTTLE_DELAY_S = 5
_DETAIL_CHARS = 500

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- errors


class RemoteUnavailable(Exception):
    """The endpoint gave no answer worth having this time (429, 502, 503, 504, a refused
    or broken connection, a timeout): worth retrying."""


class RequestRejected(Exception):
    """The endpoint refused the request's input (400, 413): an image of the batch is bad."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class RemoteError(Exception):
    """Any other failed request: an error answer (401, 403, 404, 500, ...) or an answer
    that is not a well-formed prediction of the batch. Not retried."""


class LabelMismatch(ValueError):
    """The endpoint's model does not have the labels the pipeline was given."""


def is_retryable(error: Exception) -> bool:
    """The ``retry_filter`` of the remote handlers: retries ``RemoteUnavailable`` only."""
    return isinstance(error, RemoteUnavailable)


# --------------------------------------------------------------------------- endpoints


def endpoint_kind(endpoint: str) -> str:
    """``REST`` for an ``http(s)://`` URL, ``VERTEX`` for a Vertex AI endpoint's resource
    name (``projects/<p>/locations/<l>/endpoints/<id>``).

    Raises:
        ValueError: for anything else, and for a URL that is not a model's
            (``predict_url``).
    """
    if endpoint.startswith(("http://", "https://")):
        predict_url(endpoint)  # the whole URL checked before anything runs
        return REST
    if VERTEX_ENDPOINT.fullmatch(endpoint):
        return VERTEX
    raise ValueError(
        "endpoint must be a TF Serving REST URL (http(s)://host:port/v1/models/<name>) or a "
        f"Vertex AI endpoint (projects/<p>/locations/<l>/endpoints/<id>), got {endpoint!r}"
    )


def predict_url(endpoint: str) -> str:
    """The ``:predict`` URL of a TF Serving REST model URL (kept as it is when it ends in
    ``:predict``).

    Raises:
        ValueError: unless it is an http(s) URL of ``.../v1/models/<name>[/versions/<n>]``
            or one ending in ``:predict``.
    """
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"not an http(s) URL: {endpoint!r}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"the endpoint URL takes no query or fragment: {endpoint!r}")
    path = parsed.path.rstrip("/")
    if path.endswith(":predict"):
        return endpoint
    if not _REST_MODEL_PATH.fullmatch(path):
        raise ValueError(
            "a TF Serving REST endpoint is the model's URL, e.g. "
            f"http://127.0.0.1:8080/v1/models/image-classifier; got {endpoint!r}"
        )
    return urllib.parse.urlunsplit(parsed._replace(path=path + ":predict"))


def instances(images: Sequence[bytes]) -> list[dict[str, str]]:
    """TF Serving's row format of encoded images: ``[{"b64": ...}, ...]`` (the serving
    signature's one input, ``image_bytes``)."""
    return [{"b64": base64.b64encode(image).decode("ascii")} for image in images]


def probabilities_of(prediction: Any, labels: Sequence[str]) -> np.ndarray:
    """The float32 class probabilities of one answered prediction, checked against the
    labels.

    Args:
        prediction: ``{"probabilities": [...], "class_index": i, "label": l, ...}`` (the
            export's signature outputs) or the list of probabilities itself.
        labels: The model's labels, in class-index order.

    Raises:
        RemoteError: when it holds no probabilities.
        LabelMismatch: for another number of probabilities than labels, or a ``label``
            that is not ``labels[class_index]``.
    """
    values = (
        prediction.get(signature.PROBABILITIES_NAME)
        if isinstance(prediction, Mapping)
        else prediction
    )
    try:
        probabilities = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        probabilities = None
    if probabilities is None or probabilities.ndim != 1:
        raise RemoteError(f"the answer holds no list of probabilities: {prediction!r:.{200}}")
    if probabilities.shape != (len(labels),):
        raise LabelMismatch(
            f"the endpoint's model answered {probabilities.shape[0]} class probabilities, "
            f"but there are {len(labels)} labels: the endpoint serves another model"
        )
    if isinstance(prediction, Mapping) and "label" in prediction and "class_index" in prediction:
        index, label = prediction["class_index"], prediction["label"]
        expected = labels[index] if isinstance(index, int) and 0 <= index < len(labels) else None
        if label != expected:
            raise LabelMismatch(
                f"the endpoint's model calls class {index!r} {label!r}, the labels given call "
                f"it {expected!r}: the endpoint serves a model with other labels"
            )
    return probabilities


def inference_of(prediction: Any, labels: Sequence[str]) -> np.ndarray | dict[str, np.ndarray]:
    """One answer as the in-worker handler's inference, checked against the labels: a
    detector's outputs (``detection.predictions.answer_outputs``) for an answer with
    ``detection_boxes``, as an export's outputs say its task; else ``probabilities_of``.

    Raises:
        RemoteError: when it is neither probabilities nor a well-formed detection.
        LabelMismatch: for the answer of a model with other labels.
    """
    names = list(prediction) if isinstance(prediction, Mapping) else []
    if not detection_predictions.is_detection_export(names):
        return probabilities_of(prediction, labels)
    try:
        return detection_predictions.answer_outputs(prediction, labels)
    except detection_predictions.LabelsDisagree as e:
        raise LabelMismatch(f"{e}: the endpoint serves a model with other labels") from None
    except ValueError as e:
        raise RemoteError(f"the answer is not a well-formed detection: {e}") from None


# ----------------------------------------------------------- what the remote handlers share


def check_options(labels: Sequence[str], timeout_s: float, num_retries: int) -> None:
    """Checks a remote handler's options.

    Raises:
        ValueError: for no labels, a ``timeout_s`` not > 0 or a ``num_retries`` < 0.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if num_retries < 0:
        raise ValueError(f"num_retries must be >= 0, got {num_retries}")
    if not labels:
        raise ValueError("labels must not be empty")


class _RetryCounter:
    """Tells a retry of a batch from its first request, per thread: Beam's retry calls
    ``request`` again with the same batch object, and says nothing else about it.

    A handler's client holds one: the client is made on the worker (a ``threading.local``
    does not pickle with the handler) and shared by the worker's threads.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def is_retry(self, batch: Sequence[Any]) -> bool:
        # Holding the last batch keeps it alive, so a new batch cannot reuse its identity.
        retry = getattr(self._local, "batch", None) is batch
        self._local.batch = batch
        return retry


@contextlib.contextmanager
def counted_request(
    handler: RemoteModelHandler, retries: _RetryCounter, batch: Sequence[Any]
) -> Iterator[None]:
    """Around the one request of a batch in a remote handler's ``request``: counts it
    (``remote_requests``, and ``remote_retries`` when Beam is retrying the batch) in
    ``handler.metrics_namespace``; when the endpoint refuses the batch's input
    (``RequestRejected``, re-raised), tells Beam's adaptive throttler that the request was
    accepted all the same: the endpoint is not overloaded, and the image-by-image requests
    that follow should not be held back (Beam counts only the requests that return)."""
    Metrics.counter(handler.metrics_namespace, "remote_requests").inc()
    if retries.is_retry(batch):
        Metrics.counter(handler.metrics_namespace, "remote_retries").inc()
    sent_at = time.time()
    try:
        yield
    except RequestRejected:
        handler.throttler.successful_request(sent_at * 1000)
        raise


def prediction_results(
    batch: Sequence[bytes],
    predictions: Any,
    labels: Sequence[str],
    endpoint: str,
    model_id: str | None = None,
) -> list[PredictionResult]:
    """The results of a batch from the predictions the endpoint answered for it: each
    image with its inference (``inference_of``).

    Args:
        batch: The encoded images sent.
        predictions: The answer's predictions.
        labels: The model's labels, in class-index order.
        endpoint: How an error names the endpoint.
        model_id: The results' ``model_id`` (Vertex AI's deployed model).

    Raises:
        RemoteError: unless the predictions are a list of one per image (or one is neither
            probabilities nor a well-formed detection).
        LabelMismatch: for an answer of a model with other labels.
    """
    if not isinstance(predictions, list) or len(predictions) != len(batch):
        count = len(predictions) if isinstance(predictions, list) else "no list of"
        raise RemoteError(f"{endpoint} answered {count} predictions for {len(batch)} images")
    return [
        PredictionResult(image, inference_of(prediction, labels), model_id)
        for image, prediction in zip(batch, predictions, strict=True)
    ]


# --------------------------------------------------------------------------- TF Serving REST


class TFServingRESTClient:
    """Posts predict requests to one URL, with a keep-alive ``requests`` session per thread
    (Beam shares a handler's client between the threads of a worker process)."""

    def __init__(self, url: str, timeout_s: float):
        self.url = url
        self.timeout_s = timeout_s
        self.retries = _RetryCounter()
        self._local = threading.local()

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
        return session

    def predict(self, images: Sequence[bytes]) -> Any:
        """The ``predictions`` the endpoint answers for encoded images (one per image:
        ``prediction_results`` checks).

        Raises:
            RemoteUnavailable: 429, 502, 503, 504, no connection or no answer in time.
            RequestRejected: 400 or 413.
            RemoteError: another error status, or an answer without ``predictions``.
        """
        import requests

        body = json.dumps({"instances": instances(images)})
        try:
            response = self._session().post(
                self.url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=self.timeout_s,
            )
        except requests.Timeout:
            raise RemoteUnavailable(
                f"no answer within {self.timeout_s:g} s from {self.url}"
            ) from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
            raise RemoteUnavailable(f"no connection to {self.url}: {e}") from None
        status = response.status_code
        if status != 200:
            detail = _error_message(response)
            if status in RETRYABLE_STATUS:
                raise RemoteUnavailable(f"HTTP {status} from {self.url}: {detail}")
            if status in REJECTED_STATUS:
                raise RequestRejected(status, detail)
            raise RemoteError(f"HTTP {status} from {self.url}: {detail}")
        try:
            return response.json()["predictions"]
        except (ValueError, KeyError, TypeError):
            raise RemoteError(
                f"the answer of {self.url} is not {{'predictions': [...]}}: "
                f"{response.text[:_DETAIL_CHARS]!r}"
            ) from None


def _error_message(response) -> str:
    """The ``error`` of a JSON error answer (TF Serving's and KServe's format), else the
    start of its text."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    text = error if isinstance(error, str) and error else response.text.strip()
    return (text or response.reason or "no message")[:_DETAIL_CHARS]


class TFServingRESTHandler(RemoteModelHandler[bytes, PredictionResult, TFServingRESTClient]):
    """Encoded images to a TF Serving REST endpoint, one ``:predict`` request per batch;
    each result's inference is ``inference_of`` the image's answer (probabilities, or a
    detector's outputs).

    Raises from ``run_inference`` (after Beam's retries): ``RemoteUnavailable``,
    ``RequestRejected``, ``RemoteError``, ``LabelMismatch``; ``RemoteImageHandler`` turns
    all but the last into ``InferenceFailure`` results.
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
            endpoint: The model's URL, e.g. ``http://127.0.0.1:8080/v1/models/image-classifier``
                (or its ``:predict`` URL).
            labels: The model's labels, in class-index order (checked against each answer).
            timeout_s: Longest wait for one answer; past it the request counts as
                unavailable (and is retried).
            num_retries: Retries of a request after the first try, with Beam's exponential
                backoff; 0: none.
            throttle_delay_s: How long Beam's adaptive throttling holds a request back
                when most recent ones failed.
            metrics_namespace: Namespace of the counters (the stage's name).
        """
        check_options(labels, timeout_s, num_retries)
        super().__init__(
            namespace=f"{metrics_namespace}_remote",
            num_retries=num_retries,
            throttle_delay_secs=throttle_delay_s,
            retry_filter=is_retryable,
        )
        self.url = predict_url(endpoint)
        self.labels = list(labels)
        self.timeout_s = timeout_s
        self.metrics_namespace = metrics_namespace

    def create_client(self) -> TFServingRESTClient:
        """A client of the endpoint (no request: the first batch is the first call)."""
        return TFServingRESTClient(self.url, self.timeout_s)

    def request(
        self,
        batch: Sequence[bytes],
        model: TFServingRESTClient,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """One ``:predict`` request of the batch (Beam's ``run_inference`` retries it)."""
        with counted_request(self, model.retries, batch):
            predictions = model.predict(batch)
        return prediction_results(batch, predictions, self.labels, self.url)

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        """Rejects inference args: the serving signature takes none."""
        if inference_args:
            raise ValueError(f"the serving signature takes no inference_args: {inference_args}")


# --------------------------------------------------------------------------- failures as data


class RemoteImageHandler(EncodedImageHandler[Any]):
    """RunInference handler over a remote handler (``TFServingRESTHandler``,
    ``VertexEndpointHandler``): the same requests, with what went wrong turned into
    ``InferenceFailure`` results (see the module's docstring) instead of an exception.

    Batches are ``batch_size`` images (the last of a bundle may be smaller): one request
    each.
    """

    def __init__(self, remote: RemoteModelHandler, batch_size: int, metrics_namespace: str):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._remote = remote
        self._namespace = metrics_namespace

    def load_model(self) -> Any:
        """The remote handler's client (no request is sent)."""
        return self._remote.load_model()

    def run_inference(
        self, batch: Sequence[bytes], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        """One request for the batch (with Beam's retries); image by image when the
        endpoint rejects it; ``InferenceFailure`` results for what got no answer."""
        batch = list(batch)
        try:
            return list(self._remote.run_inference(batch, model, inference_args))
        except RequestRejected as e:
            if len(batch) == 1:
                return [self._rejected(batch[0], e)]
            Metrics.counter(self._namespace, "fallback_batches").inc()
            Metrics.counter(self._namespace, "fallback_images").inc(len(batch))
            _log.info("%s: a batch of %d was rejected (%s); sending its images one by one",
                      self._namespace, len(batch), e)  # fmt: skip
        except (RemoteUnavailable, RemoteError) as e:
            return self._failed(batch, e)
        results: list[PredictionResult] = []
        for image in batch:
            try:
                results.extend(self._remote.run_inference([image], model, inference_args))
            except RequestRejected as e:
                results.append(self._rejected(image, e))
            except (RemoteUnavailable, RemoteError) as e:
                results.extend(self._failed([image], e))
        return results

    @staticmethod
    def _rejected(image: bytes, error: RequestRejected) -> PredictionResult:
        return PredictionResult(
            image, InferenceFailure(REJECTED_STATUS[error.status], error.detail)
        )

    def _failed(self, batch: list[bytes], error: Exception) -> list[PredictionResult]:
        Metrics.counter(self._namespace, "remote_failures").inc()
        Metrics.counter(self._namespace, "remote_failed_images").inc(len(batch))
        if isinstance(error, RemoteUnavailable):
            reason = REMOTE_UNAVAILABLE
            detail = f"no answer after {self._remote.num_retries} retries: {error}"
        else:
            reason, detail = REMOTE_ERROR, str(error)
        _log.warning("%s: %d image(s) got no prediction: %s", self._namespace, len(batch), detail)
        failure = InferenceFailure(reason, detail)
        return [PredictionResult(image, failure) for image in batch]

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        self._remote.validate_inference_args(inference_args)


# --------------------------------------------------------------------------- construction


def remote_handler(
    endpoint: str,
    labels: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    num_retries: int = DEFAULT_NUM_RETRIES,
    throttle_delay_s: float = DEFAULT_THROTTLE_DELAY_S,
    metrics_namespace: str = "inference",
) -> RemoteModelHandler:
    """The remote handler of an endpoint: ``TFServingRESTHandler`` for an http(s) URL,
    ``VertexEndpointHandler`` for a Vertex AI endpoint (which checks, when made, that the
    endpoint exists and serves a model).

    Raises:
        ValueError: for an endpoint of neither kind.
    """
    options = {
        "timeout_s": timeout_s,
        "num_retries": num_retries,
        "throttle_delay_s": throttle_delay_s,
        "metrics_namespace": metrics_namespace,
    }
    if endpoint_kind(endpoint) == REST:
        return TFServingRESTHandler(endpoint, labels, **options)
    from components.common.vertex_handler import VertexEndpointHandler

    return VertexEndpointHandler(endpoint, labels, **options)


def keyed_remote_handler(
    endpoint: str,
    labels: Sequence[str],
    batch_size: int = 32,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    num_retries: int = DEFAULT_NUM_RETRIES,
    throttle_delay_s: float = DEFAULT_THROTTLE_DELAY_S,
    metrics_namespace: str = "inference",
) -> KeyedModelHandler:
    """A ``RemoteImageHandler`` of the endpoint over ``(key, image bytes)`` elements that
    keeps the keys (``model_handler.keyed_handler``'s remote counterpart).

    Args:
        endpoint: A TF Serving REST model URL or a Vertex AI endpoint resource name.
        labels: The model's labels, in class-index order.
        batch_size: Images per request.
        timeout_s: Longest wait for one answer.
        num_retries: Retries of a request that got no answer (429, 502-504, connection,
            timeout).
        throttle_delay_s: Beam's adaptive throttling delay.
        metrics_namespace: Namespace of the counters (the stage's name).

    Returns:
        A handler for ``RunInference`` yielding ``(key, PredictionResult)``.
    """
    remote = remote_handler(
        endpoint, labels, timeout_s, num_retries, throttle_delay_s, metrics_namespace
    )
    return KeyedModelHandler(RemoteImageHandler(remote, batch_size, metrics_namespace))
