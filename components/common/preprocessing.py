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
    image = tf.image.resize(image, [image_size, image_size], antialias=True)
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
