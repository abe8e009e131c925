"""The streaming stage's message contract: what it reads from Pub/Sub and what it writes.

An input message names one image, either way:

* its data is the encoded image (JPEG, PNG, GIF, BMP, WebP bytes), or
* its data is the image's URI as one line of UTF-8 text (``gs://b/x.jpg``, a local path on
  the DirectRunner), or its ``image_uri`` attribute is (the data is then ignored).

Data that is one line of UTF-8 text is taken for a URI: encoded images are never valid
UTF-8 (JPEG starts with 0xFF, PNG with 0x89). Its attributes are the caller's: they come
back on the prediction (e.g. an ``id`` to match answers to requests).

A prediction message, a classifier's: JSON data ``{"message_id", "uri" (when one was
given), "label", "probability", "top_k": [{"label", "probability"}], "model_version"}``,
with the input's attributes plus ``source_message_id``, ``label`` and ``model_version``.

A detector's: JSON data ``{"message_id", "uri" (when one was given), "detections":
[{"label", "class", "score", "box", "bbox"}, ...], "model_version"}`` (batch prediction's
record, ``components.detection.predictions``: ``box`` normalized ``[ymin, xmin, ymax,
xmax]``, ``bbox`` COCO pixels, highest score first), with the input's attributes plus
``source_message_id``, ``num_detections``, ``label`` (the top detection's; absent when
nothing was found) and ``model_version``.

A dead letter (a message no prediction could be made for): the input's data unchanged and
its attributes plus ``error_reason``, ``error_detail``, ``error_stage`` and
``source_message_id``, so it can be inspected and republished as is.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

STAGE = "stream_predict"
URI_ATTRIBUTE = "image_uri"
# Reasons a message gets no prediction, besides components.common.beam's missing_file,
# unreadable_file and empty_file and the model handlers' undecodable_image and remote_*.
EMPTY_MESSAGE = "empty_message"
# A model whose outputs are neither a classifier's nor a detector's.
UNKNOWN_OUTPUTS = "unknown_outputs"
# Pub/Sub attribute values hold at most 1024 bytes.
_MAX_ATTRIBUTE_BYTES = 1024
_MAX_URI_CHARS = 2048


class BadMessage(Exception):
    """A message that names no image; ``reason`` is its dead letter's ``error_reason``
    (``empty_message``), ``detail`` says why for a person."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class Request(NamedTuple):
    """One input message, as the pipeline carries it beside the image."""

    message_id: str
    attributes: dict[str, str]
    uri: str  # "" when the data is the image
    data: bytes  # the message's data as received (for a dead letter)


def parse_message(
    data: bytes, attributes: dict[str, str] | None, message_id: str
) -> tuple[Request, str]:
    """The request a message makes, and what it names: ``"uri"`` or ``"bytes"``.

    Raises:
        BadMessage: when the message names no image.
    """
    attributes = dict(attributes or {})
    data = data or b""
    uri = attributes.get(URI_ATTRIBUTE, "").strip()
    if not uri and data:
        uri = _as_uri(data)
    if uri:
        return Request(message_id, attributes, uri, data), "uri"
    if not data:
        raise BadMessage(
            EMPTY_MESSAGE,
            f"the message has no data and no {URI_ATTRIBUTE!r} attribute: send the "
            "encoded image, or its URI as the data or in that attribute",
        )
    return Request(message_id, attributes, "", data), "bytes"


def _as_uri(data: bytes) -> str:
    if len(data) > _MAX_URI_CHARS:
        return ""
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""
    if not text or "\n" in text or "\x00" in text:
        return ""
    return text


def prediction_message(
    request: Request, record: dict[str, Any], model_version: str
) -> tuple[bytes, dict[str, str]]:
    """The data and attributes of the prediction message for a request.

    Args:
        request: The input message.
        record: The prediction: a classifier's (``label``, ``probability``, ``top_k``)
            or a detector's (``detections``).
        model_version: The version of the model that made it.
    """
    body: dict[str, Any] = {"message_id": request.message_id}
    if request.uri:
        body["uri"] = request.uri
    if "detections" in record:
        detections = record["detections"]
        body["detections"] = detections
        summary = {"num_detections": str(len(detections))}
        if detections:
            summary["label"] = detections[0]["label"]
    else:
        body.update(label=record["label"], probability=record["probability"], top_k=record["top_k"])
        summary = {"label": record["label"]}
    body["model_version"] = model_version
    attributes = {
        **request.attributes,
        "source_message_id": request.message_id,
        **summary,
        "model_version": model_version,
    }
    return json.dumps(body).encode(), attributes


def dead_letter(request: Request, reason: str, detail: str) -> tuple[bytes, dict[str, str]]:
    """The data and attributes of the dead letter for a request that got no prediction."""
    attributes = {
        **request.attributes,
        "error_reason": reason,
        "error_detail": _truncate(detail, _MAX_ATTRIBUTE_BYTES),
        "error_stage": STAGE,
        "source_message_id": request.message_id,
    }
    return request.data, attributes


def _truncate(text: str, max_bytes: int) -> str:
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - 3].decode(errors="ignore") + "..."
