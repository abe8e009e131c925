"""A split's images as the edge models take them, decoded as the SavedModels decode them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from components.classification import schema
from components.common import schema as common_schema

# Both tasks' records hold the encoded image under the Object Detection API's key.
_IMAGE = {schema.ENCODED: tf.io.FixedLenFeature([], tf.string)}


def decoded_images(
    dataset_dir: str, split: str, limit: int = 0
) -> Iterator[tuple[bytes, np.ndarray]]:
    """(encoded bytes, uint8 ``[1, height, width, 3]`` pixels) of a split's images, in
    shard order, decoded as the SavedModel decodes them (``tf.io.decode_image``, RGB); at
    most ``limit`` (0: all). Classification and detection records alike."""
    records = common_schema.read_records(common_schema.shard_files(dataset_dir, split))
    if limit:
        records = records.take(limit)
    for record in records:
        encoded = tf.io.parse_single_example(record, _IMAGE)[schema.ENCODED]
        pixels = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        yield encoded.numpy(), pixels.numpy()[None]
