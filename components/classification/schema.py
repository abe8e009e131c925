"""The classification record contract: what create_tfrecords writes of each image and
what training, evaluation and the edge exports read back.

A record is a ``tf.train.Example`` under the keys the TensorFlow ecosystem uses for an
image and its class (TF-Slim, TFDS, the TF Object Detection API's image keys)::

    image/encoded       the image as stored (JPEG): decoded pixels would be an order
                        of magnitude larger and slower to read
    image/format        "jpeg"
    image/height, image/width
    image/class/label   the label's index in labels.txt (from 0)
    image/class/text    the label
    image/filename      the image's URI

Where the records lie (splits, shards, manifests, stats) is the dataset layout every task
shares, ``components.common.schema``.
"""

from __future__ import annotations

import tensorflow as tf

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
LABEL = "image/class/label"
TEXT = "image/class/text"
FILENAME = "image/filename"

FEATURES = {
    ENCODED: tf.io.FixedLenFeature([], tf.string),
    FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
    TEXT: tf.io.FixedLenFeature([], tf.string, default_value=""),
    FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(
    encoded: bytes,
    label_index: int,
    label: str,
    filename: str,
    height: int,
    width: int,
    image_format: str = "jpeg",
) -> bytes:
    """Serialises one image and its label as a ``tf.train.Example``."""
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                ENCODED: _bytes(encoded),
                FORMAT: _bytes(image_format.encode()),
                HEIGHT: _int(height),
                WIDTH: _int(width),
                LABEL: _int(label_index),
                TEXT: _bytes(label.encode()),
                FILENAME: _bytes(filename.encode()),
            }
        )
    )
    return example.SerializeToString()


def parse_examples(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses a batch (or a single) serialised Example into its features."""
    if serialized.shape.rank == 0:
        return tf.io.parse_single_example(serialized, FEATURES)
    return tf.io.parse_example(serialized, FEATURES)
