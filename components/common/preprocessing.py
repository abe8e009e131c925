"""Image preprocessing shared by training, evaluation and the exported serving model.

One function turns encoded bytes into the model's input, so the served model sees
exactly what the trained model saw.
"""

from __future__ import annotations

import tensorflow as tf


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one encoded image (JPEG, PNG, GIF, BMP) to RGB and resizes it.

    Returns:
        A float32 tensor of shape ``[image_size, image_size, 3]`` with values in
        ``[0, 255]``: the input range of the keras.applications backbones used here,
        which carry their own normalisation.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return resize(image, image_size)


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes one decoded image to ``image_size`` square, anti-aliased where it shrinks.

    Axes that shrink are averaged over each output pixel's area (``method="area"``, a box
    filter: TensorFlow's anti-aliased resampling, at about the cost of plain bilinear);
    axes that grow are interpolated bilinearly. ``antialias=True`` (a triangle filter)
    differs by 0.8 on average on photos but costs about three times as much, and
    training resizes every random crop with this function (docs/benchmarks.md).

    Args:
        image: ``[height, width, 3]``, any real or integer dtype.
        image_size: Side of the result.

    Returns:
        float32 ``[image_size, image_size, 3]``, clipped to ``[0, 255]``.
    """
    shape = tf.shape(image)
    shrunk = [tf.minimum(shape[0], image_size), tf.minimum(shape[1], image_size)]
    image = tf.cond(
        tf.reduce_any(shape[:2] > image_size),
        lambda: tf.image.resize(image, shrunk, method="area"),
        lambda: tf.cast(image, tf.float32),
    )
    image = tf.cond(
        tf.reduce_any(shape[:2] < image_size),
        lambda: tf.image.resize(image, [image_size, image_size]),
        lambda: image,
    )
    # Both filters' weights are non-negative and sum to one; clipping only removes float
    # rounding beyond the range.
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([image_size, image_size, 3])
    return image


def decode_batch(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """``decode_and_resize`` over a 1-D batch of encoded images."""
    return tf.map_fn(
        lambda b: decode_and_resize(b, image_size),
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )
