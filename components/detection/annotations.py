"""Annotation formats in: one ``ImageAnnotation`` per image, whatever the tool wrote.

* **Pascal VOC** (LabelImg, CVAT, Roboflow): ``<dir>/Annotations/*.xml``, one file per
  image, naming its image in ``<filename>`` under ``<dir>/JPEGImages/``; boxes are
  ``<bndbox>`` pixel corners; ``<size>`` the image's size; ``difficult``, ``truncated``
  and ``pose`` per object. An annotation without ``<object>`` is an image with no object
  (a negative), kept. ``ImageSets/Main/{train,trainval,val,test}.txt`` name the split of
  each image when present (``voc_splits``).
* **COCO JSON** with an image folder: ``images`` (``id``, ``file_name``, ``width``,
  ``height``), ``annotations`` (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``
  pixels, ``iscrowd``), ``categories`` (``id``, ``name``). An image no annotation names is
  a negative, kept.
* **Vertex AI JSON Lines** (``image_bounding_box`` import schema): one image per line,
  ``imageGcsUri``, ``boundingBoxAnnotations`` with normalized ``xMin``, ``xMax``, ``yMin``,
  ``yMax`` and ``displayName``; ``dataItemResourceLabels`` may set
  ``aiplatform.googleapis.com/ml_use`` (``training``, ``validation``, ``test``).

Boxes stay as the file gives them (``RawBox``, validated and normalized against the real
image later, ``boxes.normalized_box``). A record that cannot be read (malformed XML, JSON,
a missing field, a box field that is not a number, an annotation of an image the file does
not list) raises ``AnnotationRejected`` with ``MALFORMED_ANNOTATION``: the image it names
is rejected whole, since training on an image with an object left out teaches that the
object is background.
"""

from __future__ import annotations

import json
import posixpath
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from typing import Any, NamedTuple

MALFORMED_ANNOTATION = "malformed_annotation"
VOC_IMAGES = "JPEGImages"
VOC_ANNOTATIONS = "Annotations"
VOC_SPLIT_LISTS = {"train": "train", "trainval": "train", "val": "valid", "test": "test"}
VERTEX_ML_USE = "aiplatform.googleapis.com/ml_use"
VERTEX_SPLITS = {"training": "train", "validation": "valid", "test": "test"}


class AnnotationRejected(Exception):
    """An annotation record that cannot be read; ``uri`` is the image it names (or the
    record's place in its file when it names none)."""

    def __init__(self, uri: str, detail: str, reason: str = MALFORMED_ANNOTATION):
        super().__init__(f"{reason}: {detail}")
        self.uri = uri
        self.reason = reason
        self.detail = detail


class RawBox(NamedTuple):
    """A box as the annotation gives it: corners in pixels, or normalized."""

    label: str
    xmin: Any
    ymin: Any
    xmax: Any
    ymax: Any
    difficult: int = 0
    truncated: int = 0
    view: str = ""
    is_crowd: int = 0


class ImageAnnotation(NamedTuple):
    """One image's annotation.

    Attributes:
        uri: The image file.
        boxes: Its objects; empty for an image with none.
        normalized: Whether the boxes' corners are normalized to [0, 1] (else pixels).
        size: The ``(width, height)`` the annotation declares, ``(0, 0)`` when none.
        source: Where the annotation was read (a file, and the record in it).
        split: The split the annotation names (``train``, ``valid``, ``test``), or "".
    """

    uri: str
    boxes: tuple[RawBox, ...]
    normalized: bool
    size: tuple[int, int]
    source: str
    split: str = ""


def _int_flag(text: str | None) -> int:
    try:
        return 1 if int(float(text or 0)) else 0
    except ValueError:
        return 0


def _size(width: Any, height: Any) -> tuple[int, int]:
    try:
        size = (int(float(width)), int(float(height)))
    except (TypeError, ValueError):
        return 0, 0
    return size if min(size) > 0 else (0, 0)


def resolve(path: str, folder: str) -> str:
    """``path`` as given when absolute (``/...``, ``gs://...``), else under ``folder``."""
    if "://" in path or path.startswith("/"):
        return path
    return posixpath.join(folder, path)


def parse_voc(xml: bytes, source: str, voc_dir: str) -> ImageAnnotation:
    """One VOC annotation file (``source``, under ``voc_dir/Annotations``).

    Raises:
        AnnotationRejected: malformed XML, no ``<filename>``, an object without
            ``<name>`` or ``<bndbox>`` corners.
    """
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as e:
        raise AnnotationRejected(source, f"not well-formed XML: {e}") from None
    filename = (root.findtext("filename") or "").strip()
    if root.tag != "annotation" or not filename:
        raise AnnotationRejected(source, "not a VOC annotation: no <annotation><filename>")
    uri = resolve(filename, posixpath.join(voc_dir, VOC_IMAGES))
    boxes = []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        corners = [
            box.findtext(c) if box is not None else None for c in ("xmin", "ymin", "xmax", "ymax")
        ]
        if not name or any(c is None for c in corners):
            raise AnnotationRejected(uri, f"{source}: object {i} has no <name> or <bndbox> corners")
        pose = (obj.findtext("pose") or "").strip()
        boxes.append(
            RawBox(
                name,
                *(c.strip() for c in corners),  # type: ignore[union-attr]
                difficult=_int_flag(obj.findtext("difficult")),
                truncated=_int_flag(obj.findtext("truncated")),
                view="" if pose == "Unspecified" else pose,
            )
        )
    size = root.find("size")
    declared = (
        _size(size.findtext("width"), size.findtext("height")) if size is not None else (0, 0)
    )
    return ImageAnnotation(uri, tuple(boxes), False, declared, source)


def voc_splits(lists: dict[str, str]) -> dict[str, str]:
    """Image ids to splits from the texts of ``ImageSets/Main/<name>.txt`` lists (``name``:
    train, trainval, val or test; other lists, such as per-class ones, are left out).
    A test or val listing wins over train and trainval."""
    splits: dict[str, str] = {}
    for name in ("train", "trainval", "val", "test"):
        for line in lists.get(name, "").splitlines():
            fields = line.split()
            if fields:
                splits[fields[0]] = VOC_SPLIT_LISTS[name]
    return splits


def voc_image_id(annotation: ImageAnnotation) -> str:
    """The id VOC's split lists use: the image file's name without extension."""
    return posixpath.splitext(posixpath.basename(annotation.uri))[0]


def _coco_index(data: Any, key: str, source: str) -> list[dict]:
    items = data.get(key, []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{source} is not COCO JSON: no '{key}' list")
    return items


def parse_coco(
    text: bytes, source: str, image_dir: str
) -> Iterator[ImageAnnotation | AnnotationRejected]:
    """Every image of a COCO JSON file, and a rejection for each record that cannot be read.

    Raises:
        ValueError: when the file is not JSON, or not COCO (no ``images`` list): the input
            itself is wrong, not one record.
    """
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{source} is not valid JSON: {e}") from None
    categories: dict[Any, str] = {}
    for category in _coco_index(data, "categories", source):
        if isinstance(category, dict) and "id" in category and category.get("name"):
            categories[category["id"]] = str(category["name"])
    images: dict[Any, tuple[str, tuple[int, int]]] = {}
    bad: dict[Any, str] = {}
    for i, image in enumerate(_coco_index(data, "images", source)):
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            yield AnnotationRejected(
                f"{source}#images[{i}]", "an image without 'id' or 'file_name'"
            )
            continue
        uri = resolve(str(image["file_name"]), image_dir)
        images[image["id"]] = uri, _size(image.get("width"), image.get("height"))
    boxes: dict[Any, list[RawBox]] = {image_id: [] for image_id in images}
    for i, ann in enumerate(_coco_index(data, "annotations", source)):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in images:
            yield AnnotationRejected(
                f"{source}#annotations[{i}]", f"names no listed image (image_id {image_id!r})"
            )
            continue
        bbox, category = ann.get("bbox"), ann.get("category_id")
        if category not in categories:
            bad.setdefault(
                image_id, f"annotations[{i}]: category_id {category!r} is not in 'categories'"
            )
            continue
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, int | float) for v in bbox)
        ):
            bad.setdefault(
                image_id, f"annotations[{i}]: bbox {bbox!r} is not [x, y, width, height]"
            )
            continue
        x, y, w, h = bbox
        boxes[image_id].append(
            RawBox(
                categories[category],
                x,
                y,
                x + w,
                y + h,
                is_crowd=_int_flag(str(ann.get("iscrowd", 0))),
            )
        )
    for image_id, (uri, size) in images.items():
        if image_id in bad:
            yield AnnotationRejected(uri, f"{source}: {bad[image_id]}")
        else:
            yield ImageAnnotation(uri, tuple(boxes[image_id]), False, size, f"{source}#{image_id}")


def parse_vertex_line(line: str, source: str) -> ImageAnnotation | None:
    """One line of a Vertex AI ``image_bounding_box`` JSON Lines file; None for a blank one.

    Raises:
        AnnotationRejected: not JSON, no ``imageGcsUri``, a box without ``displayName`` or
            one of its corners.
    """
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError as e:
        raise AnnotationRejected(source, f"not a JSON line: {e}") from None
    uri = record.get("imageGcsUri") if isinstance(record, dict) else None
    if not isinstance(uri, str) or not uri:
        raise AnnotationRejected(source, "no 'imageGcsUri'")
    boxes = []
    annotations = record.get("boundingBoxAnnotations")
    annotations = [] if annotations is None else annotations
    if not isinstance(annotations, list):
        raise AnnotationRejected(uri, f"{source}: 'boundingBoxAnnotations' is not a list")
    for i, ann in enumerate(annotations):
        keys = ("xMin", "yMin", "xMax", "yMax")
        if (
            not isinstance(ann, dict)
            or not ann.get("displayName")
            or any(k not in ann for k in keys)
        ):
            raise AnnotationRejected(uri, f"{source}: box {i} lacks 'displayName' or one of {keys}")
        boxes.append(RawBox(str(ann["displayName"]), *(ann[k] for k in keys)))
    labels = record.get("dataItemResourceLabels") or {}
    split = VERTEX_SPLITS.get(labels.get(VERTEX_ML_USE, ""), "") if isinstance(labels, dict) else ""
    return ImageAnnotation(uri, tuple(boxes), True, (0, 0), source, split)
