"""``preprocessing.resize`` written with the ops TFLite's builtins and TensorFlow.js run.

The serving model resizes with ``tf.image.resize``: area averaging along an axis that
shrinks, bilinear interpolation (half-pixel centres) along one that grows. Neither
TFLite's builtin ops nor TensorFlow.js have the area kernel (``ResizeArea``), so the edge
models resize the same way with what both have: each axis's resampling is linear, a
``[size, n]`` weight matrix built from the input's (run-time) length, and the image is
``W_h @ image @ W_w^T`` per channel. The result equals ``preprocessing.resize`` up to float
rounding (tests/test_export_edge.py compares them on many shapes).
"""

from __future__ import annotations

import tensorflow as tf


def axis_weights(length: tf.Tensor, size: int) -> tf.Tensor:
    """The ``[size, length]`` float32 matrix that resamples one axis of ``length`` pixels
    to ``size``, as ``preprocessing.resize`` does.

    Shrinking (``length > size``), output pixel ``y`` averages input pixels over
    ``[y * s, (y + 1) * s)``, ``s = length / size``, each weighted by its overlap (TF's
    ``ResizeArea``). Otherwise it interpolates linearly at ``(y + 0.5) * s - 0.5`` between
    the pixels below and above, clamped to the image (TF's ``ResizeBilinear`` with
    half-pixel centres); at ``length == size`` both are the identity.
    """
    source = tf.range(length)
    left = tf.cast(source, tf.float32)[None, :]  # pixel i covers [i, i + 1)
    out = tf.range(size, dtype=tf.float32)[:, None]
    scale = tf.cast(length, tf.float32) / size
    overlap = tf.minimum((out + 1.0) * scale, left + 1.0) - tf.maximum(out * scale, left)
    area = tf.nn.relu(overlap) / scale
    centre = (out + 0.5) * scale - 0.5
    floor = tf.floor(centre)
    lerp = centre - floor
    lower = tf.maximum(tf.cast(floor, tf.int32), 0)
    upper = tf.minimum(tf.cast(tf.math.ceil(centre), tf.int32), length - 1)

    def one_hot(index):
        return tf.cast(tf.equal(source[None, :], index), tf.float32)

    bilinear = (1.0 - lerp) * one_hot(lower) + lerp * one_hot(upper)
    return tf.where(length > size, area, bilinear)


def resize_batch(pixels: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes a batch of same-sized images to ``size`` square.

    Args:
        pixels: ``[batch, height, width, 3]``, any real or integer dtype (uint8 on the
            edge models), height and width known only at run time.
        size: The model's image side.

    Returns:
        float32 ``[batch, size, size, 3]`` in ``[0, 255]``: ``preprocessing.resize`` of
        each image.
    """
    shape = tf.shape(pixels)
    rows = axis_weights(shape[1], size)
    columns = axis_weights(shape[2], size)
    channels_first = tf.transpose(tf.cast(pixels, tf.float32), [0, 3, 1, 2])
    resized = tf.matmul(tf.matmul(rows, channels_first), columns, transpose_b=True)
    resized = tf.clip_by_value(tf.transpose(resized, [0, 2, 3, 1]), 0.0, 255.0)
    resized.set_shape([None, size, size, 3])
    return resized
