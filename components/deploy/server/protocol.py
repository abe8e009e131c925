"""Requests and answers: TF Serving's REST predict formats and KServe's v2, checked.

``parse_request`` (row and columnar formats) and ``parse_v2_request`` turn a request into
a ``PredictRequest``, checking each image before the model sees it (``check_image``: a
header check and size limits). Neither knows a task: the input's name is the served
signature's (``image_bytes`` for a classifier, ``inputs`` for a detector), which the
model reads from the loaded signature and passes in, and the answer holds whatever
outputs the signature returns; ``parse_v2_body`` reads a v2 request that arrives as bytes
(JSON of any content type, or the binary tensor extension); ``format_answer`` answers in
the request's own format; ``decode_error_message`` turns TensorFlow's decode error into a
400's message. Every malformed request raises kserve's ``InvalidInput``, which KServe
answers with 400 (and its gRPC server with INVALID_ARGUMENT).

This is the server's first module to import kserve, and it hides sys.argv while doing
so: the server's other modules import it before they import kserve.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io as bytes_io
import json
import re
import struct
import sys
import uuid
from typing import Any

# kserve parses sys.argv when it is imported (module-level argparse in
# kserve.model_server, which any kserve import loads) and takes its defaults from it; hide
# this CLI's arguments from it, so the two command lines never mix.
_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import (
        InferInput,
        InferOutput,
        InferRequest,
        InferResponse,
        RequestedOutput,
        deserialize_bytes_tensor,
    )
    from kserve.utils.numpy_codec import from_np_dtype
finally:
    sys.argv = _argv

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from components.common.serving import SIGNATURE  # noqa: E402
from components.deploy.server.limits import MAX_IMAGE_BYTES, MAX_INSTANCES  # noqa: E402

MAX_IMAGE_PIXELS = 50_000_000
# The formats tf.io.decode_image (the SavedModel's preprocessing) decodes.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
# Instance keys that name an image file instead of carrying it: "filenames" is the
# book's serving signature input, "image_uri" the usual name elsewhere. The server reads
# them only under the prefixes its operator allows (``uris.UriReader``).
URI_KEYS = ("filenames", "image_uri")


# --- requests --------------------------------------------------------------------------


@dataclasses.dataclass
class PredictRequest:
    """The images of one request, and the format its answer takes.

    ``form`` is ``"rows"`` (``instances``), ``"columns"`` (``inputs``) or ``"v2"``
    (KServe's v2 protocol, whose request ``v2_request`` is). ``uris`` maps the index of
    each instance that names a file (``{"filenames": ...}``) to its URI; its image is
    ``b""`` until the file is read (``uris.UriReader.read_request``). ``version`` is the
    model version that answers it (None: the latest).
    """

    images: list[bytes]
    form: str = "rows"
    v2_request: InferRequest | None = None
    uris: dict[int, str] = dataclasses.field(default_factory=dict)
    version: int | None = None


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


def _image_value(value: Any, index: int, what: Any, input_name: str) -> bytes | str:
    """The bytes of one ``{"b64": ...}`` value, or the URI of one ``{"filenames": ...}``
    value (a ``str``); ``what`` is the whole instance, for errors."""
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        return _b64decode(value["b64"], index)
    if isinstance(value, dict) and set(value) == {"b64"}:
        raise InvalidInput(
            f'instance {index}: "b64" must be a base64 string, got {_describe(value["b64"])}'
        )
    if isinstance(value, dict) and len(value) == 1 and set(value) <= set(URI_KEYS):
        [uri] = value.values()
        if not isinstance(uri, str) or not uri:
            raise InvalidInput(
                f"instance {index}: {next(iter(value))!r} must be one file's path or gs:// "
                f"URI, got {_describe(uri)}"
            )
        return uri
    if isinstance(value, dict) and set(value) & {"uri", "gcs_uri", "url", *URI_KEYS}:
        raise InvalidInput(
            f'instance {index}: name a file as {{"filenames": "gs://bucket/image.jpg"}} '
            f"alone, got {_describe(value)}"
        )
    raise InvalidInput(
        f'instance {index}: expected {{"b64": "<base64 image>"}}, '
        f'{{"{input_name}": {{"b64": "<base64 image>"}}}} or '
        f'{{"filenames": "<path or gs:// URI>"}}, got {_describe(what)}'
    )


def _instance_image(instance: Any, index: int, input_name: str) -> bytes | str:
    """The encoded image of one row-format instance, base64-decoded, or the URI it names.

    As in TF Serving, an instance is the input's value itself (``{"b64": ...}``: the
    signature has one input) or an object naming its inputs (``{input_name: {"b64": ...}}``).
    """
    if isinstance(instance, dict) and input_name in instance:
        if len(instance) != 1:
            others = sorted(set(instance) - {input_name})
            raise InvalidInput(
                f"instance {index}: unexpected inputs {others}; the signature takes only "
                f"{input_name!r}"
            )
        return _image_value(instance[input_name], index, instance, input_name)
    if isinstance(instance, dict) and len(instance) == 1:
        [(name, value)] = instance.items()
        if name not in ("b64", *URI_KEYS) and isinstance(value, dict) and "b64" in value:
            raise InvalidInput(
                f"instance {index}: unknown input {name!r}; the signature's input is "
                f'{input_name!r}: send {{"{input_name}": {{"b64": ...}}}} or {{"b64": ...}}'
            )
    return _image_value(instance, index, instance, input_name)


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


def check_count(count: int, max_instances: int) -> None:
    if count > max_instances:
        raise InvalidInput(f"{count} instances, more than the limit of {max_instances} per request")


def parse_request(
    body: Any,
    input_name: str,
    max_instances: int = MAX_INSTANCES,
    max_image_bytes: int = MAX_IMAGE_BYTES,
) -> PredictRequest:
    """The encoded images of a TF Serving REST predict request (row or columnar format)
    for a signature whose one input, of encoded images, is named ``input_name``.

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
    unknown = sorted(set(body) - {"instances", "inputs", "signature_name", "parameters"})
    if unknown:
        raise InvalidInput(
            f'unexpected keys {unknown}: a request has "instances" (row format) or "inputs" '
            '(columnar format), and optionally "signature_name"'
        )
    # Vertex AI passes its request's "parameters" on to a custom container; the model
    # takes none.
    if body.get("parameters") not in (None, {}):
        raise InvalidInput('this model takes no "parameters"; send {} or leave it out')
    signature = body.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise InvalidInput(
            f"unknown signature_name {signature!r}; this server serves {SIGNATURE!r}"
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
        key = input_name
        if isinstance(instances, dict):
            if len(instances) != 1 or not set(instances) <= {input_name, *URI_KEYS}:
                raise InvalidInput(
                    f'"inputs" names {sorted(instances)}; the signature takes only '
                    f"{input_name!r} (or the files {URI_KEYS[0]!r} names)"
                )
            [(key, instances)] = instances.items()
        if not isinstance(instances, list) or not instances:
            raise InvalidInput(
                f'"inputs" must be a non-empty list of {{"b64": ...}} values, or an object '
                f"{{{input_name!r}: [...]}} holding one"
            )
    else:
        raise InvalidInput('the request has neither "instances" nor "inputs"')
    check_count(len(instances), max_instances)
    if form == "rows":
        values = [_instance_image(instance, i, input_name) for i, instance in enumerate(instances)]
    elif key in URI_KEYS:
        values = [
            _image_value({key: value}, i, value, input_name) for i, value in enumerate(instances)
        ]
    else:
        values = [_image_value(value, i, value, input_name) for i, value in enumerate(instances)]
    uris = {i: value for i, value in enumerate(values) if isinstance(value, str)}
    images = [b"" if isinstance(value, str) else value for value in values]
    for i, data in enumerate(images):
        if i not in uris:
            check_image(data, i, max_image_bytes)
    return PredictRequest(images, form, uris=uris)


def parse_v2_request(
    request: InferRequest,
    input_name: str,
    max_instances: int = MAX_INSTANCES,
    max_image_bytes: int = MAX_IMAGE_BYTES,
) -> PredictRequest:
    """The encoded images of a KServe v2 infer request: one BYTES input, named as the
    signature's input ``input_name``, of shape [N] (or [N, 1]), base64 strings in JSON,
    raw image bytes in binary data and gRPC.

    Raises:
        InvalidInput: (HTTP 400) for anything but a well-formed request.
    """
    names = [infer_input.name for infer_input in request.inputs]
    if names != [input_name]:
        raise InvalidInput(f"expected one input named {input_name!r}, got {names}")
    [infer_input] = request.inputs
    if infer_input.datatype != "BYTES":
        raise InvalidInput(
            f"input {input_name!r} must have datatype BYTES, not {infer_input.datatype}"
        )
    data = _v2_elements(infer_input)
    if list(infer_input.shape) not in ([len(data)], [len(data), 1]):
        raise InvalidInput(
            f"input {input_name!r}: shape {list(infer_input.shape)} does not "
            f"match its {len(data)} data elements; expected [{len(data)}]"
        )
    check_count(len(data), max_instances)
    images = [
        value if isinstance(value, bytes) else _b64decode(value, i) for i, value in enumerate(data)
    ]
    for i, image in enumerate(images):
        if not image:
            raise InvalidInput(f"instance {i}: the image is empty")
        check_image(image, i, max_image_bytes)
    return PredictRequest(images, "v2", request)


def _v2_elements(infer_input: InferInput) -> list[bytes | str]:
    """The elements of a v2 BYTES input: base64 strings from JSON, raw image bytes from the
    binary tensor extension (``parse_v2_body``) and from gRPC (``bytes_contents``, or
    ``raw_input_contents``, which KServe keeps undecoded until ``as_numpy``)."""
    data = infer_input.data
    if not data and getattr(infer_input, "_raw_data", None) is not None:
        try:
            data = list(deserialize_bytes_tensor(infer_input._raw_data))
        except struct.error:
            raise InvalidInput(
                f"input {infer_input.name!r}: the raw contents are not BYTES elements "
                "(a 4-byte little-endian length before each)"
            ) from None
    if not isinstance(data, list) or not data or not all(isinstance(v, str | bytes) for v in data):
        raise InvalidInput(
            f"input {infer_input.name!r}: data must be a non-empty list of base64 "
            "strings (JSON) or of encoded images (binary data, gRPC), one per image"
        )
    return data


INFERENCE_HEADER = "inference-header-content-length"


def parse_v2_body(body: bytes, json_length: str | None, model_name: str) -> InferRequest:
    """A v2 infer request that arrives as bytes: JSON whatever its content type (what
    ``tritonclient.http`` sends), or a JSON header of ``json_length`` bytes (the
    ``Inference-Header-Content-Length`` header) followed by binary tensors, the v2 binary
    tensor extension. A binary BYTES tensor is each element's 4-byte little-endian length
    and its bytes: raw encoded images, no base64. (KServe's own reader decodes binary BYTES
    as UTF-8 text, which images are not.)

    Raises:
        InvalidInput: (HTTP 400) for a malformed body.
    """
    length = len(body)
    if json_length is not None:
        try:
            length = int(json_length)
        except ValueError:
            length = -1
        if not 0 < length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {json_length!r} is not a length within "
                f"the {len(body)}-byte body"
            )
    try:
        header = json.loads(body[:length])
    except ValueError as e:
        raise InvalidInput(f"the request's JSON is invalid: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput('a v2 request is a JSON object with a list of "inputs"')
    offset, inputs = length, []
    for spec in header["inputs"]:
        if not isinstance(spec, dict) or not {"name", "datatype", "shape"} <= set(spec):
            raise InvalidInput('each v2 input has a "name", a "datatype" and a "shape"')
        parameters = spec.get("parameters") or {}
        infer_input = InferInput(
            spec["name"], spec["shape"], spec["datatype"], parameters=parameters
        )
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InvalidInput(
                    f"input {spec['name']!r}: binary_data_size {size!r} runs past the "
                    f"{len(body) - offset} bytes left in the body"
                )
            if spec["datatype"] != "BYTES":
                raise InvalidInput(
                    f"input {spec['name']!r} must have datatype BYTES, not {spec['datatype']}"
                )
            try:
                infer_input.data = list(deserialize_bytes_tensor(body[offset : offset + size]))
            except struct.error:
                raise InvalidInput(
                    f"input {spec['name']!r}: the binary data is not BYTES elements (a "
                    "4-byte little-endian length before each)"
                ) from None
            offset += size
        elif "data" in spec:
            infer_input.data = spec["data"]
        else:
            raise InvalidInput(f"input {spec['name']!r} has neither data nor binary_data_size")
        inputs.append(infer_input)
    if offset != len(body):
        raise InvalidInput(
            f"{len(body) - offset} bytes follow the last binary tensor; the inputs' "
            "binary_data_size must add up to the body"
        )
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InvalidInput('"outputs" must be a list of {"name": ...} objects')
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=header.get("id"),
        parameters=header.get("parameters"),
        request_outputs=[RequestedOutput(o["name"], o.get("parameters")) for o in outputs] or None,
    )


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
        infer_outputs = [
            InferOutput(
                name=name,
                shape=list(outputs[name].shape),
                datatype=from_np_dtype(outputs[name].dtype),
                data=outputs[name],
            )
            for name in names
        ]
        if v2.from_grpc:
            # kserve 0.21's to_grpc answers every output, whatever the request asked for:
            # keep the requested ones here (REST's to_rest does this itself).
            if v2.request_outputs:
                wanted = [requested.name for requested in v2.request_outputs]
                unknown = sorted(set(wanted) - set(names))
                if unknown:
                    raise InvalidInput(f"unknown outputs {unknown}; the outputs are {names}")
                infer_outputs = [output for output in infer_outputs if output.name in wanted]
            # gRPC answers in raw_output_contents; set here, because kserve 0.21's to_grpc
            # takes the truth value of a NumPy array when a request sent raw inputs.
            for output in infer_outputs:
                output.set_data_from_numpy(outputs[output.name], binary_data=True)
        return InferResponse(
            response_id=v2.id or str(uuid.uuid4()),
            model_name=model_name,
            model_version=None if version is None else str(version),
            infer_outputs=infer_outputs,
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


def decode_error_message(images: list[bytes], error: Exception) -> str:
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
