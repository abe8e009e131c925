"""The local model server: KServe's Python model server serving the exported SavedModel.

One request format everywhere: TensorFlow Serving's REST predict API, the call Vertex AI's
TensorFlow container and KServe's TensorFlow predictor answer too, so one client works
against all of them. Row format (``instances``) and columnar format (``inputs``); an image
is ``{"b64": "<base64 JPEG/PNG/GIF/BMP>"}``, alone or under the input's name
``image_bytes``; ``signature_name`` is optional (only ``serving_default`` exists)::

    POST /v1/models/<name>:predict
    {"instances": [{"b64": "..."}, ...]}
    {"instances": [{"image_bytes": {"b64": "..."}}, ...], "signature_name": "serving_default"}
    200 {"predictions": [{"probabilities": [...], "class_index": 2, "label": "triangle",
                          "score": 0.93}, ...]}

    {"inputs": {"image_bytes": [{"b64": "..."}, ...]}}      (or {"inputs": [{"b64": ...}]})
    200 {"outputs": {"probabilities": [[...], ...], "class_index": [...], "label": [...],
                     "score": [...]}}

The same body elsewhere:

* Vertex AI endpoint: ``POST https://<region>-aiplatform.googleapis.com/v1/projects/<p>/
  locations/<region>/endpoints/<id>:predict`` with the row-format body (Vertex AI takes
  ``instances`` only), or ``gcloud ai endpoints predict <id> --json-request=body.json``.
* KServe InferenceService: ``POST http://<isvc host>/v1/models/<name>:predict``, the path and
  body above (KServe's TensorFlow predictor and this server alike).
* KServe's v2 (Open Inference Protocol), also served here: ``POST /v2/models/<name>/infer``
  with ``{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [N],
  "data": ["<base64>", ...]}]}``; the answer has one v2 output per signature output
  (``probabilities`` FP32 [N, classes], ``class_index`` INT64 [N], ``label`` BYTES [N],
  ``score`` FP32 [N]). The v2 binary tensor extension is refused (400): KServe 0.21
  decodes binary BYTES as UTF-8, which image bytes are not.

Errors are JSON, ``{"error": "<why>"}``:

* 400: malformed JSON, a body that is not an object, both or neither of ``instances`` and
  ``inputs``, an unknown key or input name, a value that is not ``{"b64": ...}`` (URIs are
  not read: send the bytes), bad base64, bytes that are not an image the model decodes, an
  unsupported format, too many instances or too large an image, an unknown
  ``signature_name``.
* 404: unknown model or route. 413: a body over ``--max-body-bytes``, refused from its
  Content-Length before it is read, or while a chunked body is read.
* 503 with ``Retry-After: 1``: more than ``--max-inflight`` predict requests at once
  (refused at once, nothing queues beyond the bound), or the model is not loaded yet.

Health routes, for Kubernetes probes; none counts against the in-flight bound::

    liveness   GET /v2/health/live   200 {"live": true}   (or GET /: {"status": "alive"})
               as soon as the server listens: while the model loads, while predictions
               run, while draining
    readiness  GET /v2/health/ready  200 {"ready": true}; 503 while the model loads and
               from SIGTERM on. Per model, the same: GET /v1/models/<name> (KServe v1,
               {"name": ..., "ready": true}) and GET /v2/models/<name>/ready
    metrics    GET /metrics          Prometheus, with image_classifier_model_call_images
               (images per signature call) and image_classifier_rejected_requests_total

    livenessProbe:  {httpGet: {path: /v2/health/live, port: 8080}, periodSeconds: 10}
    readinessProbe: {httpGet: {path: /v2/health/ready, port: 8080}, periodSeconds: 2}
    # terminationGracePeriodSeconds >= --shutdown-delay-s + --grace-period-s + a few;
    # in a pod the server listens on --host 0.0.0.0

Shutdown: on SIGTERM (or SIGINT) readiness turns false; with ``--shutdown-delay-s`` the
server keeps serving that long (time for Kubernetes to take it out of the Service's
endpoints; a second signal ends the delay), then stops accepting connections, lets the
requests in flight finish within ``--grace-period-s`` and exits 0.

Server-side batching (``--batch-max-size`` > 0): the images of concurrent requests run
together in one signature call, at most ``--batch-max-size`` images (a larger request runs
alone, never split), one call at a time; requests that arrive while a call runs form the
next one, so batches grow with load, and ``--batch-timeout-ms`` is how long the first
request of a batch waits for company. Each caller gets its own rows; an image that fails
to decode fails only its own request. 0 turns batching off: each request is its own call,
several at once in threads. On by default, with no wait: on two CPU cores bench/serve.py
measured the same latency as without batching for one client and 1.7 times the
throughput for 32 (docs/benchmarks.md); a wait only added its own length to latency.

What this module adds to KServe: the request formats above and the checks of each image
before the model sees it (a header check, size limits, TensorFlow's decode error as 400,
not 500); the body-size and in-flight bounds (an ASGI middleware); JSON bodies for
FastAPI's own errors; readiness that covers model loading (the model loads in the
background once the server listens) and shutdown (a ``DataPlane`` subclass and a uvicorn
``Server`` subclass); batching; and a loopback bind address: kserve 0.21's REST server
hard-codes ``0.0.0.0``, so ``LoopbackModelServer`` sets uvicorn's host. gRPC is off.

Usage::

    python -m components.deploy.server --model-repository DIR --model-name NAME \\
        [--model-version N] [--http-port 8080] [--host 127.0.0.1] [--max-inflight 32] \\
        [--max-body-bytes 16777216] [--batch-max-size 32] [--batch-timeout-ms 0] ...

It serves the latest version in the repository at start-up (or ``--model-version``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import dataclasses
import io as bytes_io
import json
import logging
import re
import sys
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

# kserve parses sys.argv when it is imported (module-level argparse in
# kserve.model_server) and takes its defaults from it; hide this CLI's arguments from
# it, so the two command lines never mix.
_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, PredictorProtocol
    from kserve.errors import InvalidInput
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.protocol.rest.server import RESTServer
    from kserve.utils.numpy_codec import from_np_dtype
finally:
    sys.argv = _argv

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import uvicorn  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402
from prometheus_client import Counter, Histogram  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from uvicorn.importer import import_from_string  # noqa: E402

from components.common import serving  # noqa: E402
from components.deploy import (  # noqa: E402
    DEFAULT_HTTP_PORT,
    GRACE_PERIOD_S,
    LOOPBACK,
    model_repository,
)

DEFAULT_HOST = LOOPBACK
MAX_INSTANCES = 64
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_INFLIGHT = 32
BATCH_MAX_SIZE = 32
BATCH_TIMEOUT_MS = 0.0
SHUTDOWN_DELAY_S = 0.0
RETRY_AFTER_S = 1
# The formats tf.io.decode_image (the SavedModel's preprocessing) decodes.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
# Methods that never count against the in-flight bound: probes, metadata, metrics.
_UNBOUNDED_METHODS = ("GET", "HEAD", "OPTIONS")
# How much of a refused body is read (and dropped) before the 413 when the connection
# closes after the answer; beyond it the answer goes out at once.
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)
# kserve 0.21 answers with ORJSONResponse, which fastapi deprecates: one warning a request.
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")

MODEL_CALL_IMAGES = Histogram(
    "image_classifier_model_call_images",
    "Images per call of the serving signature (a batch of one or more requests)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
REJECTED_REQUESTS = Counter(
    "image_classifier_rejected_requests",
    "Requests refused before the model saw them, by reason",
    ["reason"],
)


# --- requests --------------------------------------------------------------------------


@dataclasses.dataclass
class PredictRequest:
    """The images of one request, and the format its answer takes.

    ``form`` is ``"rows"`` (``instances``), ``"columns"`` (``inputs``) or ``"v2"``
    (KServe's v2 protocol, whose request ``v2_request`` is).
    """

    images: list[bytes]
    form: str = "rows"
    v2_request: InferRequest | None = None


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}"
    return f"a JSON {type(value).__name__}"


def _b64decode(text: str, index: int) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"instance {index}: invalid base64: {e}") from None
    if not data:
        raise InvalidInput(f"instance {index}: the image is empty")
    return data


def _b64_value(value: Any, index: int, what: Any) -> bytes:
    """The bytes of one ``{"b64": ...}`` value; ``what`` is the whole instance, for errors."""
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        return _b64decode(value["b64"], index)
    if isinstance(value, dict) and set(value) == {"b64"}:
        raise InvalidInput(
            f'instance {index}: "b64" must be a base64 string, got {_describe(value["b64"])}'
        )
    if isinstance(value, dict) and set(value) & {"uri", "gcs_uri", "image_uri", "url"}:
        raise InvalidInput(
            f"instance {index}: this server does not read URIs; send the image itself as "
            '{"b64": "<base64 image>"} (batch_predict classifies images by URI)'
        )
    raise InvalidInput(
        f'instance {index}: expected {{"b64": "<base64 image>"}} or '
        f'{{"{serving.INPUT_NAME}": {{"b64": "<base64 image>"}}}}, got {_describe(what)}'
    )


def _instance_image(instance: Any, index: int) -> bytes:
    """The encoded image of one row-format instance, base64-decoded."""
    if isinstance(instance, dict) and serving.INPUT_NAME in instance:
        if len(instance) != 1:
            others = sorted(set(instance) - {serving.INPUT_NAME})
            raise InvalidInput(
                f"instance {index}: unexpected inputs {others}; the signature takes only "
                f"{serving.INPUT_NAME!r}"
            )
        return _b64_value(instance[serving.INPUT_NAME], index, instance)
    return _b64_value(instance, index, instance)


def check_image(data: bytes, index: int, max_bytes: int = MAX_IMAGE_BYTES) -> None:
    """Rejects bytes that are not an image the model decodes, or too large a one.

    Reads only the image header (PIL opens lazily): cheap, and it keeps decompression
    bombs (a small file of a huge image) away from the decoder.
    """
    if len(data) > max_bytes:
        raise InvalidInput(
            f"instance {index}: the image is {len(data)} bytes, more than the limit of "
            f"{max_bytes} bytes"
        )
    try:
        with Image.open(bytes_io.BytesIO(data)) as image:
            image_format, (width, height) = image.format, image.size
    except UnidentifiedImageError:
        raise InvalidInput(
            f"instance {index}: not an image (expected {', '.join(IMAGE_FORMATS)} bytes)"
        ) from None
    except Exception as e:  # PIL raises assorted errors on corrupt or truncated headers
        raise InvalidInput(f"instance {index}: not a readable image: {e}") from None
    if image_format not in IMAGE_FORMATS:
        raise InvalidInput(
            f"instance {index}: unsupported image format {image_format}; "
            f"expected one of {', '.join(IMAGE_FORMATS)}"
        )
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidInput(
            f"instance {index}: the image is {width}x{height} pixels, more than the limit "
            f"of {MAX_IMAGE_PIXELS} pixels"
        )


def _check_count(count: int, max_instances: int) -> None:
    if count > max_instances:
        raise InvalidInput(f"{count} instances, more than the limit of {max_instances} per request")


def parse_request(
    body: Any, max_instances: int = MAX_INSTANCES, max_image_bytes: int = MAX_IMAGE_BYTES
) -> PredictRequest:
    """The encoded images of a TF Serving REST predict request (row or columnar format).

    Raises:
        InvalidInput: (HTTP 400) for anything but a well-formed request.
    """
    if isinstance(body, bytes | bytearray | str):
        # KServe hands over the raw body when the content type is not a JSON one.
        try:
            body = json.loads(body)
        except ValueError as e:
            raise InvalidInput(f"the request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidInput(
            f'expected a JSON object with "instances" or "inputs", got {_describe(body)}'
        )
    unknown = sorted(set(body) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise InvalidInput(
            f'unexpected keys {unknown}: a request has "instances" (row format) or "inputs" '
            '(columnar format), and optionally "signature_name"'
        )
    signature = body.get("signature_name", serving.SIGNATURE)
    if signature != serving.SIGNATURE:
        raise InvalidInput(
            f"unknown signature_name {signature!r}; this server serves {serving.SIGNATURE!r}"
        )
    if "instances" in body and "inputs" in body:
        raise InvalidInput(
            'a request has "instances" (row format) or "inputs" (columnar format), not both'
        )
    if "instances" in body:
        instances, form = body["instances"], "rows"
        if not isinstance(instances, list) or not instances:
            raise InvalidInput('"instances" must be a non-empty list')
    elif "inputs" in body:
        instances, form = body["inputs"], "columns"
        if isinstance(instances, dict):
            if set(instances) != {serving.INPUT_NAME}:
                raise InvalidInput(
                    f'"inputs" names {sorted(instances)}; the signature takes only '
                    f"{serving.INPUT_NAME!r}"
                )
            instances = instances[serving.INPUT_NAME]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput(
                f'"inputs" must be a non-empty list of {{"b64": ...}} values, or an object '
                f"{{{serving.INPUT_NAME!r}: [...]}} holding one"
            )
    else:
        raise InvalidInput('the request has neither "instances" nor "inputs"')
    _check_count(len(instances), max_instances)
    if form == "rows":
        images = [_instance_image(instance, i) for i, instance in enumerate(instances)]
    else:
        images = [_b64_value(value, i, value) for i, value in enumerate(instances)]
    for i, data in enumerate(images):
        check_image(data, i, max_image_bytes)
    return PredictRequest(images, form)


def parse_v2_request(
    request: InferRequest,
    max_instances: int = MAX_INSTANCES,
    max_image_bytes: int = MAX_IMAGE_BYTES,
) -> PredictRequest:
    """The encoded images of a KServe v2 infer request: one BYTES input of base64 strings.

    Raises:
        InvalidInput: (HTTP 400) for anything but a well-formed request.
    """
    names = [infer_input.name for infer_input in request.inputs]
    if names != [serving.INPUT_NAME]:
        raise InvalidInput(f"expected one input named {serving.INPUT_NAME!r}, got {names}")
    [infer_input] = request.inputs
    if infer_input.datatype != "BYTES":
        raise InvalidInput(
            f"input {serving.INPUT_NAME!r} must have datatype BYTES, not {infer_input.datatype}"
        )
    data = infer_input.data
    if not isinstance(data, list) or not data or not all(isinstance(v, str) for v in data):
        raise InvalidInput(
            f"input {serving.INPUT_NAME!r}: data must be a non-empty list of base64 "
            "strings, one per image"
        )
    if list(infer_input.shape) != [len(data)]:
        raise InvalidInput(
            f"input {serving.INPUT_NAME!r}: shape {list(infer_input.shape)} does not "
            f"match its {len(data)} data elements; expected [{len(data)}]"
        )
    _check_count(len(data), max_instances)
    images = [_b64decode(text, i) for i, text in enumerate(data)]
    for i, image in enumerate(images):
        check_image(image, i, max_image_bytes)
    return PredictRequest(images, "v2", request)


# --- answers ---------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist"):
        return _to_json(value.tolist())
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


def format_answer(
    request: PredictRequest, outputs: dict[str, np.ndarray], model_name: str, version: Any
) -> dict | InferResponse:
    """The answer to ``request`` in its own format, from the signature's outputs."""
    names = sorted(outputs)
    if request.form == "v2":
        v2 = request.v2_request
        return InferResponse(
            response_id=v2.id or str(uuid.uuid4()),
            model_name=model_name,
            model_version=None if version is None else str(version),
            infer_outputs=[
                InferOutput(
                    name=name,
                    shape=list(outputs[name].shape),
                    datatype=from_np_dtype(outputs[name].dtype),
                    data=outputs[name],
                )
                for name in names
            ],
            use_binary_outputs=v2.use_binary_outputs,
            requested_outputs=v2.request_outputs,
        )
    columns = {name: _to_json(outputs[name]) for name in names}
    if request.form == "columns":
        return {"outputs": columns}
    return {
        "predictions": [
            {name: columns[name][i] for name in names} for i in range(len(request.images))
        ]
    }


def _decode_error(images: list[bytes], error: Exception) -> str:
    """Names the instances TensorFlow cannot decode (only run once a batch has failed)."""
    bad = []
    for i, data in enumerate(images):
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            bad.append(i)
    # Drop TensorFlow's "{{function_node ...}}" prefix and its graph context.
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", getattr(error, "message", str(error)))
    detail = (message.strip().splitlines() or ["unknown error"])[0]
    where = f"instance {', '.join(map(str, bad))}" if bad else "the batch"
    return f"{where}: the image does not decode: {detail}"


# --- batching --------------------------------------------------------------------------

ModelCall = Callable[[list[bytes]], dict[str, np.ndarray]]


@dataclasses.dataclass
class _Pending:
    images: list[bytes]
    future: asyncio.Future


class Batcher:
    """Runs the images of concurrent requests together, one model call at a time.

    ``predict`` queues a request's images; a worker task takes the queued requests, up
    to ``max_size`` images (a larger request goes alone; requests are never split), runs
    ``run`` on them in the event loop's default executor, and hands each request its own
    rows. Requests that arrive while a call runs make up the next call, so batches grow
    with load; ``timeout_s`` is how long the first request of a batch waits for more
    when none is queued. When a batch fails with ``InvalidInput`` (an image that does not
    decode), its requests run again one by one, so that only the bad request fails.
    """

    def __init__(self, run: ModelCall, max_size: int, timeout_s: float = 0.0):
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self.run = run
        self.max_size = max_size
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._next: _Pending | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a model call."""
        waiting = 0 if self._queue is None else self._queue.qsize()
        return waiting + (self._next is not None)

    async def predict(self, images: list[bytes]) -> dict[str, np.ndarray]:
        """The model's outputs for ``images``, rows in the same order."""
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._work())
        pending = _Pending(images, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    async def _collect(self) -> list[_Pending]:
        first = self._next or await self._queue.get()
        self._next = None
        batch, size = [first], len(first.images)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while size < self.max_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(item.images) > self.max_size:
                self._next = item
                break
            batch.append(item)
            size += len(item.images)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            images = [image for item in batch for image in item.images]
            try:
                outputs = await loop.run_in_executor(None, self.run, images)
            except InvalidInput as e:
                if len(batch) == 1:
                    _settle(batch[0].future, error=e)
                else:
                    for item in batch:
                        try:
                            result = await loop.run_in_executor(None, self.run, item.images)
                        except Exception as item_error:
                            _settle(item.future, error=item_error)
                        else:
                            _settle(item.future, result)
                continue
            except Exception as e:
                for item in batch:
                    _settle(item.future, error=e)
                continue
            start = 0
            for item in batch:
                end = start + len(item.images)
                _settle(item.future, {name: value[start:end] for name, value in outputs.items()})
                start = end


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None):
    if future.done():  # its request was cancelled (shutdown past the grace period)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# --- the model -------------------------------------------------------------------------


class ImageClassifierModel(kserve.Model):
    """Serves one version of an exported image classifier from a model repository."""

    def __init__(
        self,
        name: str,
        repository: str,
        version: int | None = None,
        max_instances: int = MAX_INSTANCES,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        batch_max_size: int = BATCH_MAX_SIZE,
        batch_timeout_ms: float = BATCH_TIMEOUT_MS,
    ):
        super().__init__(name)
        self.repository = repository
        self.version = version
        self.model_dir: str | None = None
        self.max_instances = max_instances
        self.max_image_bytes = max_image_bytes
        self.batch_max_size = batch_max_size
        self.batch_timeout_ms = batch_timeout_ms
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
        if self.batch_max_size > 0:
            self._batcher = Batcher(
                self.run_signature, self.batch_max_size, self.batch_timeout_ms / 1000.0
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
            raise InvalidInput(_decode_error(images, e)) from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    async def preprocess(
        self, payload: Any, headers: dict[str, str] | None = None
    ) -> PredictRequest:
        if isinstance(payload, InferRequest):
            return parse_v2_request(payload, self.max_instances, self.max_image_bytes)
        return parse_request(payload, self.max_instances, self.max_image_bytes)

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


# --- the HTTP server -------------------------------------------------------------------


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

    The body bound is checked from Content-Length, answered before the body is read, and
    again while the body is read, which catches chunked bodies (the app's own answer is
    then replaced by the 413). Either way uvicorn discards the rest of the body as it
    arrives, without buffering it, and keeps the connection: closing it on a client still
    sending would reset the connection before most clients read the 413 (those that send
    ``Expect: 100-continue``, like curl, never send the body). Where the client asked for
    the connection to close, the rest of the body (up to 64 MiB) is read and dropped
    before the 413, for the same reason. The in-flight bound counts requests of every
    method but GET, HEAD and OPTIONS (so probes always answer) from their arrival to their
    answer, and refuses the ones beyond it at once with 503 and ``Retry-After``. 0
    disables either bound.
    """

    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES, max_inflight: int = MAX_INFLIGHT):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_inflight = max_inflight
        self.inflight = 0

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
        if bounded and self.max_inflight and self.inflight >= self.max_inflight:
            REJECTED_REQUESTS.labels("overloaded").inc()
            await _send_error(
                send,
                503,
                f"the server is busy: {self.inflight} requests in flight, the limit is "
                f"{self.max_inflight}; retry later",
                [(b"retry-after", str(RETRY_AFTER_S).encode("ascii"))],
            )
            return
        if bounded:
            self.inflight += 1
        try:
            await self._bounded_body(scope, receive, send)
        finally:
            if bounded:
                self.inflight -= 1

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


async def _http_error(_, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)


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
    served while it lasts. v2 bodies that are not JSON (the binary tensor extension) are
    refused with 400: KServe decodes binary BYTES tensors as UTF-8 text.
    """

    def __init__(self, model_registry):
        super().__init__(model_registry)
        self.draining = False

    async def ready(self) -> bool:
        if self.draining:
            return False
        models = list(self.model_registry.get_models().values())
        return bool(models) and all([await model.healthy() for model in models])

    async def model_ready(self, model_name: str, disable_predictor_health_check: bool = False):
        ready = await super().model_ready(model_name, disable_predictor_health_check)
        return ready and (disable_predictor_health_check or not self.draining)

    def decode(self, body, headers, protocol_version=PredictorProtocol.REST_V1.value, **kwargs):
        if protocol_version.lower() == PredictorProtocol.REST_V2.value and isinstance(body, bytes):
            raise InvalidInput(
                "the v2 binary tensor extension is not supported: send a JSON body with "
                f'{{"name": "{serving.INPUT_NAME}", "datatype": "BYTES", "shape": [N], '
                '"data": ["<base64 image>", ...]}'
            )
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


class LimitedRESTServer(RESTServer):
    """KServe's REST server bound to ``host``, with ``RequestLimits``, JSON bodies for
    FastAPI's own errors (404, 405, validation) and a ``DrainingServer``."""

    def __init__(
        self,
        *args,
        host: str = DEFAULT_HOST,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_inflight: int = MAX_INFLIGHT,
        shutdown_delay_s: float = SHUTDOWN_DELAY_S,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.max_body_bytes = max_body_bytes
        self.max_inflight = max_inflight
        self._server = DrainingServer(self.config, self.dataplane, shutdown_delay_s)

    @property
    def server(self) -> DrainingServer:
        return self._server

    def create_application(self) -> None:
        super().create_application()
        app = import_from_string(FASTAPI_APP_IMPORT_STRING)
        # Added last, so outermost: a refused request costs nothing further.
        app.add_middleware(
            RequestLimits, max_body_bytes=self.max_body_bytes, max_inflight=self.max_inflight
        )
        app.add_exception_handler(StarletteHTTPException, _http_error)
        app.add_exception_handler(RequestValidationError, _validation_error)


class ModelLoadError(RuntimeError):
    """A model failed to load; the server stopped."""


class LoopbackModelServer(kserve.ModelServer):
    """kserve's ModelServer on one REST server bound to ``host`` (kserve binds 0.0.0.0),
    that listens before its models load: liveness answers at once, readiness once loaded.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_inflight: int = MAX_INFLIGHT,
        shutdown_delay_s: float = SHUTDOWN_DELAY_S,
        **kwargs,
    ):
        kwargs.setdefault("enable_grpc", False)
        kwargs.setdefault("workers", 1)
        kwargs.setdefault("grace_period", GRACE_PERIOD_S)
        super().__init__(**kwargs)
        if self.enable_grpc or self.workers != 1:
            raise ValueError("LoopbackModelServer runs one REST worker and no gRPC server")
        self.host = host
        self.max_body_bytes = max_body_bytes
        self.max_inflight = max_inflight
        self.shutdown_delay_s = shutdown_delay_s
        self.dataplane = ServingDataPlane(model_registry=self.registered_models)
        self._load_error: BaseException | None = None

    def start(self, models: list[kserve.Model]) -> None:
        """Serves ``models`` (not loaded yet) until SIGTERM/SIGINT; loads them meanwhile.

        Raises:
            ModelLoadError: when a model fails to load; the server stops at once then.
        """
        for model in models:
            self.register_model(model)
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
            max_body_bytes=self.max_body_bytes,
            max_inflight=self.max_inflight,
            shutdown_delay_s=self.shutdown_delay_s,
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
        loading = asyncio.create_task(self._load(models))
        try:
            await self._rest_server.start()
        finally:
            loading.cancel()

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


def serve(
    model_repository_dir: str,
    model_name: str,
    http_port: int = DEFAULT_HTTP_PORT,
    host: str = DEFAULT_HOST,
    version: int | None = None,
    max_instances: int = MAX_INSTANCES,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_inflight: int = MAX_INFLIGHT,
    batch_max_size: int = BATCH_MAX_SIZE,
    batch_timeout_ms: float = BATCH_TIMEOUT_MS,
    shutdown_delay_s: float = SHUTDOWN_DELAY_S,
    grace_period_s: int = GRACE_PERIOD_S,
) -> None:
    """Serves the model until SIGTERM or SIGINT; it loads while the server listens.

    Raises:
        FileNotFoundError: when the repository holds no such model or version (before
            the server starts).
        ModelLoadError: when the model fails to load (the server stops).
    """
    model = ImageClassifierModel(
        model_name,
        model_repository_dir,
        version,
        max_instances=max_instances,
        max_image_bytes=max_image_bytes,
        batch_max_size=batch_max_size,
        batch_timeout_ms=batch_timeout_ms,
    )
    model.resolve()
    LoopbackModelServer(
        host=host,
        http_port=http_port,
        max_body_bytes=max_body_bytes,
        max_inflight=max_inflight,
        shutdown_delay_s=shutdown_delay_s,
        grace_period=grace_period_s,
    ).start([model])


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m components.deploy.server",
        description="Serve the latest version of an exported image classifier over "
        "TensorFlow Serving's REST predict API (KServe's model server).",
    )
    parser.add_argument("--model-repository", required=True, help="model repository root")
    parser.add_argument("--model-name", required=True, help="model name (directory under it)")
    parser.add_argument(
        "--model-version", type=int, default=None, help="version to serve (default: the latest)"
    )
    parser.add_argument(
        "--http-port", type=int, default=DEFAULT_HTTP_PORT, help="(default: %(default)s)"
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="bind address (default: %(default)s; 0.0.0.0 exposes it to the network)",
    )
    parser.add_argument(
        "--max-instances",
        "--max-batch-size",
        dest="max_instances",
        type=_count,
        default=MAX_INSTANCES,
        help="images per request, at most (default: %(default)s)",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=_count,
        default=MAX_IMAGE_BYTES,
        help="bytes per encoded image, at most (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_count,
        default=MAX_BODY_BYTES,
        help="request body size limit, 413 beyond it; 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--max-inflight",
        type=_count,
        default=MAX_INFLIGHT,
        help="predict requests in flight at once, 503 beyond; 0: no limit (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-max-size",
        type=_count,
        default=BATCH_MAX_SIZE,
        help="images per model call when batching concurrent requests; 0: no batching "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=_seconds,
        default=BATCH_TIMEOUT_MS,
        help="how long a batch's first request waits for more (default: %(default)s)",
    )
    parser.add_argument(
        "--shutdown-delay-s",
        type=_seconds,
        default=SHUTDOWN_DELAY_S,
        help="after SIGTERM, seconds of serving with readiness off before the server stops "
        "accepting (default: %(default)s)",
    )
    parser.add_argument(
        "--grace-period-s",
        type=_count,
        default=GRACE_PERIOD_S,
        help="seconds the requests in flight get to finish once the server stops accepting "
        "(default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        serve(
            args.model_repository,
            args.model_name,
            http_port=args.http_port,
            host=args.host,
            version=args.model_version,
            max_instances=args.max_instances,
            max_image_bytes=args.max_image_bytes,
            max_body_bytes=args.max_body_bytes,
            max_inflight=args.max_inflight,
            batch_max_size=args.batch_max_size,
            batch_timeout_ms=args.batch_timeout_ms,
            shutdown_delay_s=args.shutdown_delay_s,
            grace_period_s=args.grace_period_s,
        )
    except (FileNotFoundError, ValueError, ModelLoadError) as e:  # no such model, bad option
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
