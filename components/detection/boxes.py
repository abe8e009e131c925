"""Labelled boxes: checked, normalized to their image, clipped, and turned with it.

A ``Box`` is normalized ``[0, 1]`` coordinates of the image as it is stored (upright, as
``image_checks`` stores it), the Object Detection API's convention. Annotation tools give
pixels (VOC: ``xmin..xmax`` of the pixel grid, 1-based, which the Object Detection API's
own ``create_pascal_tf_record.py`` divides by the width as they are; COCO: ``[x, y, w,
h]`` from 0) or normalized values (Vertex AI), in the frame of the pixels as the file
stores them, before EXIF orientation (what TensorFlow's decoder, LabelImg and the Object
Detection API's tools see) unless the annotation's declared size says it was drawn on the
upright image (``annotation_frame``).

What cannot be a box is rejected with ``INVALID_BOX`` (not a number, inverted, zero
width or height, or wholly outside the image); a box partly outside its image is clipped
to it and counted.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

INVALID_BOX = "invalid_box"


class BoxRejected(Exception):
    """An annotated box that is not a box; ``detail`` says why for a person."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.reason = INVALID_BOX
        self.detail = detail


class Box(NamedTuple):
    """One labelled object, its box normalized to ``[0, 1]`` of the stored image.

    ``difficult``, ``truncated`` and ``view`` are VOC's (``pose``), ``is_crowd`` COCO's
    ``iscrowd``: written to the records as the Object Detection API writes them.
    """

    label: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: int = 0
    truncated: int = 0
    view: str = ""
    is_crowd: int = 0


def _number(name: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BoxRejected(f"{name} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise BoxRejected(f"{name} is not a finite number: {value!r}")
    return number


def normalized_box(
    label: str,
    xmin: object,
    ymin: object,
    xmax: object,
    ymax: object,
    width: float = 1.0,
    height: float = 1.0,
    **attributes,
) -> tuple[Box, bool]:
    """A box from corner coordinates in units of ``width`` x ``height`` (pixels, or 1 for
    coordinates already normalized), clipped to the image.

    Returns:
        The box and whether it was clipped.

    Raises:
        BoxRejected: for a coordinate that is not a finite number, an inverted or empty
            box, or one wholly outside the image.
    """
    corners = [
        _number(n, v) for n, v in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax))
    ]
    if not (width > 0 and height > 0):
        raise BoxRejected(f"the image size {width}x{height} has no area")
    x0, y0, x1, y1 = (
        corners[0] / width,
        corners[1] / height,
        corners[2] / width,
        corners[3] / height,
    )
    where = f"{label!r} box xmin={corners[0]:g} ymin={corners[1]:g} xmax={corners[2]:g} ymax={corners[3]:g}"
    if x1 < x0 or y1 < y0:
        raise BoxRejected(f"{where} is inverted (max < min)")
    if x1 == x0 or y1 == y0:
        raise BoxRejected(f"{where} has zero area")
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0)
    if cx1 <= cx0 or cy1 <= cy0:
        raise BoxRejected(f"{where} lies outside the {width:g}x{height:g} image")
    clipped = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
    return Box(label, cx0, cy0, cx1, cy1, **attributes), clipped


# How each EXIF orientation maps a normalized point (x, y) of the stored pixels to the
# upright image that ImageOps.exif_transpose makes (tests/test_detection_boxes.py checks
# every one against Pillow).
_ORIENT = {
    1: lambda x, y: (x, y),
    2: lambda x, y: (1 - x, y),
    3: lambda x, y: (1 - x, 1 - y),
    4: lambda x, y: (x, 1 - y),
    5: lambda x, y: (y, x),
    6: lambda x, y: (1 - y, x),
    7: lambda x, y: (1 - y, 1 - x),
    8: lambda x, y: (y, 1 - x),
}
TRANSPOSING = (5, 6, 7, 8)  # Orientations that swap width and height.


def orient(box: Box, orientation: int) -> Box:
    """``box`` on the stored pixels, moved as EXIF ``orientation`` (1-8) turns them upright."""
    move = _ORIENT.get(orientation, _ORIENT[1])
    (ax, ay), (bx, by) = move(box.xmin, box.ymin), move(box.xmax, box.ymax)
    return box._replace(xmin=min(ax, bx), ymin=min(ay, by), xmax=max(ax, bx), ymax=max(ay, by))


def annotation_frame(declared: tuple[int, int], stored: tuple[int, int], orientation: int) -> str:
    """Which pixels an annotation's boxes were drawn on: ``"stored"`` (as the file stores
    them, before EXIF orientation) or ``"upright"``.

    Only a declared ``(width, height)`` equal to the upright image's and not to the
    stored one's says ``"upright"`` (a tool that turned the image first); anything else
    (no size, the stored size, a square image) is the stored pixels, what TensorFlow's
    decoder and the Object Detection API's tools see.
    """
    upright = stored[::-1] if orientation in TRANSPOSING else stored
    if declared == upright and declared != stored:
        return "upright"
    return "stored"


def area(box: Box, width: int, height: int) -> float:
    """The box's area in pixels of a ``width`` x ``height`` image."""
    return (box.xmax - box.xmin) * width * (box.ymax - box.ymin) * height


UNKNOWN_CLASS = "unknown_class"
SIZE_MISMATCH = "size_mismatch"


class ImageBoxesRejected(Exception):
    """An image whose annotation cannot be used; ``reason`` is ``invalid_box``,
    ``unknown_class`` or ``size_mismatch``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def image_boxes(
    raw_boxes: Sequence[Any],
    normalized: bool,
    declared: tuple[int, int],
    stored: tuple[int, int],
    orientation: int,
    labels: Collection[str],
) -> tuple[tuple[Box, ...], int]:
    """An image's annotated boxes (``annotations.RawBox``) as ``Box``es on the upright
    image that is stored, and how many were clipped to it.

    Args:
        raw_boxes: The boxes as the annotation gives them.
        normalized: Whether their corners are normalized (else pixels).
        declared: The ``(width, height)`` the annotation declares, ``(0, 0)`` when none.
        stored: The ``(width, height)`` of the pixels as the file stores them.
        orientation: The image's EXIF orientation, applied to the stored image.
        labels: The classes in use.

    Raises:
        ImageBoxesRejected: a box that is not one, a class not in ``labels``, or a
            declared size that is neither the stored nor the upright image's.
    """
    frame = annotation_frame(declared, stored, orientation) if declared != (0, 0) else "stored"
    upright = stored[::-1] if orientation in TRANSPOSING else stored
    if declared != (0, 0) and declared not in (stored, upright):
        detail = (
            f"the annotation is for a {declared[0]}x{declared[1]} image, the file is "
            f"{stored[0]}x{stored[1]}"
        )
        raise ImageBoxesRejected(SIZE_MISMATCH, detail)
    width, height = (1, 1) if normalized else (upright if frame == "upright" else stored)
    boxes, clipped = [], 0
    for raw in raw_boxes:
        if raw.label not in labels:
            detail = f"class {raw.label!r} is not one of the {len(labels)} classes in use"
            raise ImageBoxesRejected(UNKNOWN_CLASS, detail)
        attributes = {
            "difficult": raw.difficult,
            "truncated": raw.truncated,
            "view": raw.view,
            "is_crowd": raw.is_crowd,
        }
        try:
            box, was_clipped = normalized_box(
                raw.label, raw.xmin, raw.ymin, raw.xmax, raw.ymax, width, height, **attributes
            )
        except BoxRejected as e:
            raise ImageBoxesRejected(e.reason, e.detail) from None
        boxes.append(box if frame == "upright" else orient(box, orientation))
        clipped += was_clipped
    return tuple(boxes), clipped
