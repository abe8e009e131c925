"""The detection TFRecord contract: the TF Object Detection API's, key for key.

Records are ``tf.train.Example`` protos with the keys the Object Detection API's dataset
tools write (``create_pascal_tf_record.py``, ``create_coco_tf_record.py``), so they also
train in the Object Detection API and TF Model Garden::

    image/encoded, image/format ("jpeg"), image/height, image/width,
    image/filename, image/source_id, image/key/sha256,
    image/object/bbox/xmin|xmax|ymin|ymax    normalized to [0, 1]
    image/object/class/text                  the class names
    image/object/class/label                 their ids, from 1 (label_map.pbtxt)
    image/object/difficult, truncated, view  VOC's
    image/object/area, is_crowd              COCO's (area: the box's, in stored pixels)

``image/filename`` and ``image/source_id`` are the image's URI: unique and stable, which
COCO evaluation needs of a source id. Class ids are positions in the label list plus one
(0 is background in the Object Detection API), written beside the shards as
``label_map.pbtxt`` (its ``StringIntLabelMap`` text format) and ``labels.txt``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import tensorflow as tf

from components.detection.boxes import Box, area

LABEL_MAP_FILE = "label_map.pbtxt"

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
FILENAME = "image/filename"
SOURCE_ID = "image/source_id"
SHA256 = "image/key/sha256"
XMIN = "image/object/bbox/xmin"
XMAX = "image/object/bbox/xmax"
YMIN = "image/object/bbox/ymin"
YMAX = "image/object/bbox/ymax"
CLASS_TEXT = "image/object/class/text"
CLASS_LABEL = "image/object/class/label"
DIFFICULT = "image/object/difficult"
TRUNCATED = "image/object/truncated"
VIEW = "image/object/view"
AREA = "image/object/area"
IS_CROWD = "image/object/is_crowd"

FEATURES = {
    ENCODED: tf.io.FixedLenFeature([], tf.string),
    FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
    FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    SHA256: tf.io.FixedLenFeature([], tf.string, default_value=""),
    XMIN: tf.io.VarLenFeature(tf.float32),
    XMAX: tf.io.VarLenFeature(tf.float32),
    YMIN: tf.io.VarLenFeature(tf.float32),
    YMAX: tf.io.VarLenFeature(tf.float32),
    CLASS_TEXT: tf.io.VarLenFeature(tf.string),
    CLASS_LABEL: tf.io.VarLenFeature(tf.int64),
    DIFFICULT: tf.io.VarLenFeature(tf.int64),
    TRUNCATED: tf.io.VarLenFeature(tf.int64),
    VIEW: tf.io.VarLenFeature(tf.string),
    AREA: tf.io.VarLenFeature(tf.float32),
    IS_CROWD: tf.io.VarLenFeature(tf.int64),
}


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values: Sequence[float]) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def make_example(
    encoded: bytes,
    uri: str,
    height: int,
    width: int,
    sha256: str,
    boxes: Sequence[Box],
    class_ids: dict[str, int],
    image_format: str = "jpeg",
) -> bytes:
    """Serialises one image and its boxes as the Object Detection API's ``tf.train.Example``.

    Args:
        encoded: The stored image bytes.
        uri: The image's URI (``image/filename`` and ``image/source_id``).
        height: Height of the stored image in pixels.
        width: Width of the stored image in pixels.
        sha256: Hex SHA-256 of ``encoded``.
        boxes: The objects, normalized to the stored image; none for a negative.
        class_ids: Class name to id (from 1), as in ``label_map.pbtxt``.
        image_format: The encoding of ``encoded``.
    """
    feature = {
        ENCODED: _bytes([encoded]),
        FORMAT: _bytes([image_format.encode()]),
        HEIGHT: _ints([height]),
        WIDTH: _ints([width]),
        FILENAME: _bytes([uri.encode()]),
        SOURCE_ID: _bytes([uri.encode()]),
        SHA256: _bytes([sha256.encode()]),
        XMIN: _floats([b.xmin for b in boxes]),
        XMAX: _floats([b.xmax for b in boxes]),
        YMIN: _floats([b.ymin for b in boxes]),
        YMAX: _floats([b.ymax for b in boxes]),
        CLASS_TEXT: _bytes([b.label.encode() for b in boxes]),
        CLASS_LABEL: _ints([class_ids[b.label] for b in boxes]),
        DIFFICULT: _ints([b.difficult for b in boxes]),
        TRUNCATED: _ints([b.truncated for b in boxes]),
        VIEW: _bytes([b.view.encode() for b in boxes]),
        AREA: _floats([area(b, width, height) for b in boxes]),
        IS_CROWD: _ints([b.is_crowd for b in boxes]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized record; the per-object lists come back dense (one entry per
    box, in the order written)."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    return {
        key: tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
        for key, value in parsed.items()
    }


def class_ids(labels: Sequence[str]) -> dict[str, int]:
    """Class name to id: position in ``labels`` plus one (0 is the background)."""
    return {label: i + 1 for i, label in enumerate(labels)}


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def label_map_text(labels: Sequence[str]) -> str:
    """``labels`` as a ``label_map.pbtxt`` (the Object Detection API's
    ``StringIntLabelMap`` text format), ids from 1."""
    items = [
        f"item {{\n  id: {i}\n  name: {_quoted(label)}\n  display_name: {_quoted(label)}\n}}\n"
        for label, i in class_ids(labels).items()
    ]
    return "".join(items)


_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_FIELD = re.compile(r"""(\w+)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|(-?\d+))""")


def parse_label_map(text: str) -> list[str]:
    """The class names of a ``label_map.pbtxt``, in id order (ids 1..n, each once).

    Raises:
        ValueError: when an item lacks an id or a name, or the ids are not 1..n.
    """
    by_id: dict[int, str] = {}
    for n, item in enumerate(_ITEM.findall(text)):
        fields: dict[str, str] = {}
        for name, double, single, number in _FIELD.findall(item):
            value = number if number else (double or single)
            fields.setdefault(name, re.sub(r"\\(.)", r"\1", value))
        if "id" not in fields or "name" not in fields:
            raise ValueError(f"label map item {n} needs an id and a name: {item.strip()!r}")
        item_id = int(fields["id"])
        if item_id in by_id:
            raise ValueError(f"label map id {item_id} is given twice")
        by_id[item_id] = fields["name"]
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise ValueError(f"label map ids must be 1..{len(by_id)}, got {sorted(by_id)}")
    return [by_id[i] for i in sorted(by_id)]
