"""The local model server: KServe's Python model server serving the exported SavedModel.

It speaks TensorFlow Serving's REST predict API, the same call Vertex AI's TensorFlow
container and KServe's TensorFlow predictor answer, so a client works against all three::

    POST /v1/models/<name>:predict
    {"instances": [{"b64": "<base64 JPEG>"}, ...], "signature_name": "serving_default"}
    {"instances": [{"image_bytes": {"b64": "<base64 JPEG>"}}, ...]}

    200 {"predictions": [{"probabilities": [...], "class_index": 2,
                          "label": "triangle", "score": 0.93}, ...]}
    400 {"error": "<why>"}   malformed JSON, no instances, bad base64, bytes that are not
                             a JPEG/PNG/GIF/BMP image, too many or too large images,
                             unknown signature_name
    404 {"error": ...}       unknown model name

KServe adds the rest: ``GET /v1/models/<name>`` (200 ``{"name", "ready": true}`` once
loaded), ``GET /`` (liveness), ``GET /v2/health/ready``, ``GET /metrics``.

What this module adds to KServe: base64 decoding and checks of each image before the
model sees it (a header check, size limits, and TensorFlow's decode error turned into
400 rather than 500), and a loopback bind address: kserve 0.21's REST server hard-codes
``0.0.0.0`` and has no host option, so ``LoopbackModelServer`` sets uvicorn's host
before it starts. gRPC is off.

Usage::

    python -m components.deploy.server --model-repository DIR --model-name NAME \\
        [--model-version N] [--http-port 8080] [--host 127.0.0.1]

It serves the latest version in the repository at start-up (or ``--model-version``),
and stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io as bytes_io
import json
import logging
import re
import sys
import warnings
from typing import Any

# kserve parses sys.argv when it is imported (module-level argparse in
# kserve.model_server) and takes its defaults from it; hide this CLI's arguments from
# it, so the two command lines never mix.
_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.errors import InvalidInput
    from kserve.protocol.rest.server import RESTServer
finally:
    sys.argv = _argv

import tensorflow as tf  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from components.deploy import (  # noqa: E402
    DEFAULT_HTTP_PORT,
    GRACE_PERIOD_S,
    LOOPBACK,
    model_repository,
)
from components.export import saved_model  # noqa: E402

DEFAULT_HOST = LOOPBACK
MAX_BATCH_SIZE = 64
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
# The formats tf.io.decode_image (the SavedModel's preprocessing) decodes.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")

log = logging.getLogger(__name__)
# kserve 0.21 answers with ORJSONResponse, which fastapi deprecates: one warning a request.
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")


def _b64_image(instance: Any, index: int) -> bytes:
    """The encoded image of one row-format instance, base64-decoded."""
    value = instance
    if isinstance(value, dict) and saved_model.INPUT_NAME in value:
        if len(value) != 1:
            others = sorted(set(value) - {saved_model.INPUT_NAME})
            raise InvalidInput(
                f"instance {index}: unexpected inputs {others}; the signature takes only "
                f"{saved_model.INPUT_NAME!r}"
            )
        value = value[saved_model.INPUT_NAME]
    if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
        raise InvalidInput(
            f'instance {index}: expected {{"b64": "<base64 image>"}} or '
            f'{{"{saved_model.INPUT_NAME}": {{"b64": "<base64 image>"}}}}, '
            f"got {_describe(instance)}"
        )
    try:
        data = base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"instance {index}: invalid base64: {e}") from None
    if not data:
        raise InvalidInput(f"instance {index}: the image is empty")
    return data


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}"
    return f"a JSON {type(value).__name__}"


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


def parse_request(
    body: Any, max_batch_size: int = MAX_BATCH_SIZE, max_image_bytes: int = MAX_IMAGE_BYTES
) -> list[bytes]:
    """The encoded images of a TF Serving row-format predict request.

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
        raise InvalidInput(f'expected a JSON object with "instances", got {_describe(body)}')
    signature = body.get("signature_name", saved_model.SIGNATURE)
    if signature != saved_model.SIGNATURE:
        raise InvalidInput(
            f"unknown signature_name {signature!r}; this server serves {saved_model.SIGNATURE!r}"
        )
    if "instances" not in body:
        hint = ' (the columnar "inputs" format is not supported)' if "inputs" in body else ""
        raise InvalidInput(f'the request has no "instances"{hint}')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list')
    if len(instances) > max_batch_size:
        raise InvalidInput(
            f"{len(instances)} instances, more than the limit of {max_batch_size} per request"
        )
    images = [_b64_image(instance, i) for i, instance in enumerate(instances)]
    for i, data in enumerate(images):
        check_image(data, i, max_image_bytes)
    return images


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist"):
        return _to_json(value.tolist())
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


class ImageClassifierModel(kserve.Model):
    """Serves one version of an exported image classifier from a model repository."""

    def __init__(
        self,
        name: str,
        repository: str,
        version: int | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        max_image_bytes: int = MAX_IMAGE_BYTES,
    ):
        super().__init__(name)
        self.repository = repository
        self.version = version
        self.model_dir: str | None = None
        self.max_batch_size = max_batch_size
        self.max_image_bytes = max_image_bytes
        self._loaded = None
        self._serve = None

    def load(self) -> bool:
        if self.version is None:
            self.version, self.model_dir = model_repository.latest_version(
                self.repository, self.name
            )
        else:
            self.model_dir = model_repository.version_dir(self.repository, self.name, self.version)
        # Keep the loaded object: its variables must outlive the signature function.
        self._loaded = tf.saved_model.load(self.model_dir)
        self._serve = self._loaded.signatures[saved_model.SIGNATURE]
        log.info("loaded model %s version %s from %s", self.name, self.version, self.model_dir)
        self.ready = True
        return self.ready

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> list[bytes]:
        return parse_request(payload, self.max_batch_size, self.max_image_bytes)

    def _run(self, images: list[bytes]) -> dict[str, Any]:
        try:
            outputs = self._serve(**{saved_model.INPUT_NAME: tf.constant(images, tf.string)})
        except tf.errors.InvalidArgumentError as e:
            # The header looked right but the image does not decode (e.g. truncated).
            raise InvalidInput(_decode_error(images, e)) from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    async def predict(
        self, payload: list[bytes], headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        outputs = await asyncio.get_running_loop().run_in_executor(None, self._run, payload)
        names = sorted(outputs)
        return {
            "predictions": [
                {name: _to_json(outputs[name][i]) for name in names} for i in range(len(payload))
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


class LoopbackModelServer(kserve.ModelServer):
    """kserve's ModelServer on one REST server bound to ``host`` (kserve binds 0.0.0.0)."""

    def __init__(self, host: str = DEFAULT_HOST, **kwargs):
        kwargs.setdefault("enable_grpc", False)
        kwargs.setdefault("workers", 1)
        kwargs.setdefault("grace_period", GRACE_PERIOD_S)
        super().__init__(**kwargs)
        if self.enable_grpc or self.workers != 1:
            raise ValueError("LoopbackModelServer runs one REST worker and no gRPC server")
        self.host = host

    def start(self, models: list[kserve.Model]) -> None:
        # kserve.ModelServer.start for workers=1 and no gRPC, with the bind address set.
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
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
        )
        self._rest_server.config.host = self.host
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def serve(
    model_repository_dir: str,
    model_name: str,
    http_port: int = DEFAULT_HTTP_PORT,
    host: str = DEFAULT_HOST,
    version: int | None = None,
    max_batch_size: int = MAX_BATCH_SIZE,
    max_image_bytes: int = MAX_IMAGE_BYTES,
) -> None:
    """Loads the model and serves it until SIGTERM or SIGINT."""
    model = ImageClassifierModel(
        model_name, model_repository_dir, version, max_batch_size, max_image_bytes
    )
    model.load()
    LoopbackModelServer(host=host, http_port=http_port).start([model])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m components.deploy.server",
        description="Serve the latest version of an exported image classifier over "
        "TensorFlow Serving's REST predict API (KServe's model server).",
    )
    parser.add_argument("--model-repository", required=True, help="model repository root")
    parser.add_argument("--model-name", required=True, help="model name (directory under it)")
    parser.add_argument(
        "--model-version", type=int, default=None, help="version to serve (default: latest)"
    )
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="bind address (default loopback; 0.0.0.0 exposes it to the network)",
    )
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE)
    parser.add_argument("--max-image-bytes", type=int, default=MAX_IMAGE_BYTES)
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
            max_batch_size=args.max_batch_size,
            max_image_bytes=args.max_image_bytes,
        )
    except (FileNotFoundError, ValueError) as e:  # no such model or version, bad option
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
