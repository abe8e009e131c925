"""A detection prediction as batch prediction writes it: one JSON object per image.

The export (``components.detection.export``) answers, per image, the Object Detection
API's outputs; ``detection_record`` keeps its ``num_detections`` real detections::

    {"uri": "gs://b/images/a.jpg",
     "detections": [{"label": "cat", "class": 1, "score": 0.93,
                     "box": [ymin, xmin, ymax, xmax],     normalized, inside [0, 1]
                     "bbox": [x, y, width, height]},      COCO: pixels of the image
                    ...],                                 highest score first
     "true_classes": ["cat", "dog"]}                      when the listing gave them

``bbox`` is ``box`` on the image's pixel size as stored (the size in the encoded image's
header, read with Pillow without decoding the pixels; EXIF orientation is not applied,
as the model does not apply it either).

The same detections in Vertex AI's format (``detection_format="vertex"``, ``vertex_line``):
a line of a Vertex AI batch prediction job of an AutoML image object detection model::

    {"instance": {"content": "gs://b/images/a.jpg", "mimeType": "image/jpeg"},
     "prediction": {"ids": [1, ...], "displayNames": ["cat", ...],
                    "confidences": [0.93, ...],
                    "bboxes": [[xMin, xMax, yMin, yMax], ...]},    normalized
     "true_classes": ["cat", "dog"]}                                 when the listing gave them

``ids`` are the classes (from 1, as ``class``; AutoML's are its annotation specs' ids).

``check_answer`` is the deploy step's proof that a served detector answers one image
well formed, ``answer_summary`` what the deploy result says of that answer.

NumPy and Pillow only: batch prediction's workers and the deploy step import this
without Keras (or TensorFlow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Any

import numpy as np

# The output that tells a detection export from a classifier (the Object Detection API's).
BOXES = "detection_boxes"
# The Object Detection API's outputs: a detector's export answers them (and more).
OUTPUTS = (BOXES, "detection_classes", "detection_scores", "num_detections")
LABELS_OUTPUT = "detection_labels"
# How a detection line is written (``image_record``): the Object Detection API's outputs
# in the suite's record (the default), or Vertex AI's AutoML image object detection shape.
OBJECT_DETECTION_API = "object_detection_api"
VERTEX = "vertex"
DETECTION_FORMATS = (OBJECT_DETECTION_API, VERTEX)


class LabelsDisagree(ValueError):
    """A well-formed detection whose classes or ``detection_labels`` are not those of the
    labels given: the answer of a model with other labels."""


def is_detection_export(output_names: Sequence[str]) -> bool:
    """Whether an export's serving signature, by its output names, is a detector's."""
    return BOXES in output_names


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of an encoded image, from its header (the pixels not decoded).

    Raises:
        ValueError: when Pillow cannot read the header.
    """
    width, height, _ = image_header(data)
    return width, height


def image_header(data: bytes) -> tuple[int, int, str]:
    """``(width, height, MIME type)`` of an encoded image, from its header (the pixels not
    decoded; the type "" when Pillow knows none for the format).

    Raises:
        ValueError: when Pillow cannot read the header.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(BytesIO(data)) as image:
            width, height = image.size
            return width, height, Image.MIME.get(image.format or "", "")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read the image's size: {e}") from None


def image_record(
    uri: str,
    outputs: Mapping[str, np.ndarray],
    image: bytes,
    true_classes: Sequence[str] | None = None,
    labels: Sequence[str] = (),
    detection_format: str = OBJECT_DETECTION_API,
) -> dict[str, Any]:
    """The line of one predicted image, its boxes in the pixels its header states: the
    record (``detection_record``) or, with ``detection_format="vertex"``, Vertex AI's
    shape of it (``vertex_line``). What both prediction stages write.

    Args:
        uri: The image's URI.
        outputs: The detector's outputs for the image (see ``detection_record``).
        image: The encoded image the detector saw.
        true_classes: The classes the listing gave for the image, if any.
        labels: The model's labels in class order (for outputs without
            ``detection_labels``).
        detection_format: ``"object_detection_api"`` or ``"vertex"``.

    Raises:
        ValueError: when the image's header cannot be read, or for another format.
    """
    if detection_format not in DETECTION_FORMATS:
        raise ValueError(
            f"detection_format must be one of {DETECTION_FORMATS}, got {detection_format!r}"
        )
    width, height, mime_type = image_header(image)
    record = detection_record(uri, outputs, width, height, true_classes, labels)
    if detection_format == VERTEX:
        return vertex_line(record, mime_type)
    return record


def vertex_line(record: Mapping[str, Any], mime_type: str) -> dict[str, Any]:
    """A detection record (``detection_record``) as a line of a Vertex AI batch
    prediction job of an AutoML image object detection model: ``instance`` (``content``:
    the URI, ``mimeType``) and ``prediction`` (``ids``, ``displayNames``,
    ``confidences``, ``bboxes`` as normalized ``[xMin, xMax, yMin, yMax]``), highest
    confidence first; ``true_classes`` kept when the record has them."""
    detections = record["detections"]
    line: dict[str, Any] = {
        "instance": {"content": record["uri"], "mimeType": mime_type},
        "prediction": {
            "ids": [d["class"] for d in detections],
            "displayNames": [d["label"] for d in detections],
            "confidences": [d["score"] for d in detections],
            "bboxes": [
                [xmin, xmax, ymin, ymax]
                for ymin, xmin, ymax, xmax in (d["box"] for d in detections)
            ],
        },
    }
    if "true_classes" in record:
        line["true_classes"] = record["true_classes"]
    return line


def detection_record(
    uri: str,
    outputs: Mapping[str, np.ndarray],
    width: int,
    height: int,
    true_classes: Sequence[str] | None = None,
    labels: Sequence[str] = (),
) -> dict[str, Any]:
    """One line of detection predictions (see the module's docstring).

    Args:
        uri: The image's URI.
        outputs: The export's outputs for this image (each output's slice of the batch):
            ``detection_boxes`` ``[max_detections, 4]``, ``detection_classes`` (from 1),
            ``detection_scores``, ``num_detections`` and, when the export has it,
            ``detection_labels``.
        width: The image's width in pixels.
        height: The image's height in pixels.
        true_classes: The classes the listing gave for the image, if any.
        labels: The export's labels in class order, for an export without
            ``detection_labels`` (class ``c`` is ``labels[c - 1]``).

    Returns:
        ``{"uri", "detections": [{"label", "class", "score", "box", "bbox"}, ...]}``, plus
        ``"true_classes"`` when given.
    """
    count = int(outputs["num_detections"])
    boxes = np.asarray(outputs[BOXES], dtype=np.float64)[:count]
    classes = np.asarray(outputs["detection_classes"])[:count].astype(int)
    scores = np.asarray(outputs["detection_scores"], dtype=np.float64)[:count]
    if LABELS_OUTPUT in outputs:
        names = [_text(name) for name in outputs[LABELS_OUTPUT][:count]]
    else:
        names = [labels[c - 1] if 0 < c <= len(labels) else str(c) for c in classes]
    detections = []
    for box, class_id, score, name in zip(boxes, classes, scores, names, strict=True):
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        detections.append(
            {
                "label": name,
                "class": int(class_id),
                "score": float(score),
                "box": [ymin, xmin, ymax, xmax],
                "bbox": [
                    xmin * width,
                    ymin * height,
                    (xmax - xmin) * width,
                    (ymax - ymin) * height,
                ],
            }
        )
    record: dict[str, Any] = {"uri": uri, "detections": detections}
    if true_classes is not None:
        record["true_classes"] = list(true_classes)
    return record


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_answer(prediction: Mapping[str, Any], labels: Sequence[str]) -> Mapping[str, Any]:
    """Checks a served detector's answer for one image (a row of TF Serving's REST
    ``predictions``): the Object Detection API's outputs, boxes normalized inside [0, 1],
    scores inside [0, 1], the classes of the ``num_detections`` real detections (from 1)
    within ``labels``, and ``detection_labels`` (when answered) naming them.

    Returns:
        ``prediction``, checked.

    Raises:
        LabelsDisagree: when the answer is well formed but its classes or labels are not
            these labels' (another model's answer).
        ValueError: when the answer is not a well-formed detection (the message says each
            problem).
    """
    missing = [name for name in OUTPUTS if name not in prediction]
    if missing:
        raise ValueError(f"the detection has no {missing}: {prediction!r:.500}")
    boxes, classes, scores, count = (prediction[name] for name in OUTPUTS)
    if not (
        isinstance(boxes, list)
        and len(boxes) == len(classes) == len(scores)
        and isinstance(count, int | float)
        and count == int(count)
        and 0 <= count <= len(scores)
    ):
        raise ValueError(
            f"{len(boxes)} boxes, {len(classes)} classes, {len(scores)} scores and "
            f"num_detections {count!r}"
        )
    real = classes[: int(count)]
    problems = []
    if not all(
        isinstance(box, list) and len(box) == 4 and all(0.0 <= v <= 1.0 for v in box)
        for box in boxes
    ):
        problems.append("a box is not 4 normalized coordinates inside [0, 1]")
    if not all(0.0 <= score <= 1.0 for score in scores):
        problems.append("a score is not inside [0, 1]")
    disagreements = []
    if not all(c == int(c) and 1 <= c <= len(labels) for c in real):
        disagreements.append(f"classes {real[:10]} are not all within 1..{len(labels)}")
    elif LABELS_OUTPUT in prediction:
        named = prediction[LABELS_OUTPUT][: len(real)]
        if named != [labels[int(c) - 1] for c in real]:
            disagreements.append(
                f"detection_labels {named[:10]} do not name the classes {real[:10]}"
            )
    if problems:
        raise ValueError("; ".join(problems + disagreements))
    if disagreements:
        raise LabelsDisagree("; ".join(disagreements))
    return prediction


def answer_outputs(prediction: Mapping[str, Any], labels: Sequence[str]) -> dict[str, np.ndarray]:
    """A served detector's answer for one image, checked (``check_answer``), as the
    export's outputs for that image: ``{output name: array}``, what ``detection_record``
    reads (an endpoint's answer where the in-worker handler has the signature's outputs).

    Raises:
        LabelsDisagree: for classes or labels that are not these labels'.
        ValueError: when the answer is not a well-formed detection.
    """
    check_answer(prediction, labels)
    return {name: np.asarray(value) for name, value in prediction.items()}


def answer_summary(prediction: Mapping[str, Any]) -> dict[str, Any]:
    """A checked answer's top detection: ``{"num_detections", "label", "score"}`` (the
    label empty and the score 0 when the detector found nothing)."""
    count = int(prediction["num_detections"])
    scores = prediction["detection_scores"][:count]
    top = max(range(count), key=scores.__getitem__, default=None)
    named = prediction.get(LABELS_OUTPUT) or [""] * count
    return {
        "num_detections": count,
        "label": "" if top is None else named[top],
        "score": 0.0 if top is None else float(scores[top]),
    }
