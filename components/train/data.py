"""tf.data input pipelines over the TFRecord shards written by create_tfrecords."""

from __future__ import annotations

import tensorflow as tf

from components.common import preprocessing, schema

AUTOTUNE = tf.data.AUTOTUNE


def _parse(serialized: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    features = schema.parse_examples(serialized)
    image = preprocessing.decode_and_resize(features[schema.ENCODED], image_size)
    return image, features[schema.LABEL]


def _augment(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Light augmentation on a whole batch: flips and brightness/contrast jitter."""
    images = tf.image.random_flip_left_right(images)
    images = tf.image.random_brightness(images, max_delta=20.0)
    images = tf.image.random_contrast(images, 0.85, 1.15)
    return tf.clip_by_value(images, 0.0, 255.0), labels


def make_dataset(
    dataset_dir: str,
    split: str,
    image_size: int,
    batch_size: int,
    training: bool = False,
    shuffle_buffer: int = 2048,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of ``(images, labels)`` of one split.

    Shards are read in parallel (interleave), decoded and resized in parallel, and
    prefetched; training batches are shuffled and augmented, evaluation batches keep
    the files' order.
    """
    files = schema.shard_files(dataset_dir, split)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=schema.COMPRESSION),
        cycle_length=min(len(files), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=not training,
    )
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    # The split's size is known: declaring it gives Keras its steps per epoch (progress
    # bars, no "ran out of data" warning at the end of the first epoch).
    ds = ds.apply(tf.data.experimental.assert_cardinality(schema.split_size(dataset_dir, split)))
    ds = ds.map(lambda s: _parse(s, image_size), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=False)
    if training:
        ds = ds.map(_augment, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
