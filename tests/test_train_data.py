"""The train stage's tf.data input pipeline: what it yields, and that it yields it right."""

import collections
import io
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.common import labels as label_io, preprocessing, schema
from components.common.io import read_json
from components.train import data

SIZE = 32


def _epoch(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels of one pass over ``ds``."""
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in ds), strict=True)
    return np.concatenate(images), np.concatenate(labels)


def _class_counts(dataset_dir: str, split: str, labels: np.ndarray) -> dict[str, int]:
    """Images per label, every label included (0 when none), as stats.json counts them."""
    names = label_io.read_labels(os.path.join(dataset_dir, "labels.txt"))
    counts = collections.Counter(names[int(i)] for i in labels)
    return {name: counts[name] for name in names}


def _records(dataset_dir: str, split: str) -> dict[str, tf.Tensor]:
    """Every record of a split, parsed, in the files' order."""
    files = schema.shard_files(dataset_dir, split)
    serialized = list(tf.data.TFRecordDataset(files, compression_type=schema.COMPRESSION))
    return schema.parse_examples(tf.stack(serialized))


def _jpeg(height: int, width: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("training", [False, True])
def test_batches_have_the_promised_shapes_types_and_range(tfrecord_dataset, training):
    count = schema.split_size(tfrecord_dataset, "train")
    ds = data.make_dataset(tfrecord_dataset, "train", SIZE, 8, training=training, seed=0)
    assert int(ds.cardinality()) == math.ceil(count / 8)
    batches = list(ds)
    assert len(batches) == math.ceil(count / 8)
    for images, labels in batches[:-1]:
        assert images.shape == (8, SIZE, SIZE, 3) and images.dtype == tf.float32
        assert labels.shape == (8,) and labels.dtype == tf.int64
    assert batches[-1][0].shape[0] == count - 8 * (len(batches) - 1)
    images = np.concatenate([b[0].numpy() for b in batches])
    assert images.min() >= 0.0 and images.max() <= 255.0
    assert images.std() > 10  # real pixels, not a constant


@pytest.mark.parametrize(
    "split,training,cache",
    [("valid", False, False), ("test", False, True), ("train", True, False), ("train", True, True)],
)
def test_every_example_is_seen_once_per_epoch(tfrecord_dataset, split, training, cache):
    expected = read_json(os.path.join(tfrecord_dataset, "stats.json"))["classes"][split]
    ds = data.make_dataset(tfrecord_dataset, split, SIZE, 5, training=training, cache=cache)
    for _ in range(2):
        _, labels = _epoch(ds)
        assert _class_counts(tfrecord_dataset, split, labels) == expected


def test_evaluation_decodes_exactly_as_serving_does(tfrecord_dataset):
    records = _records(tfrecord_dataset, "valid")
    serving = preprocessing.decode_batch(records[schema.ENCODED], SIZE).numpy()
    for cache in (False, True):
        ds = data.make_dataset(tfrecord_dataset, "valid", SIZE, 4, cache=cache)
        for _ in range(2):  # the cached pass and the pass from the cache
            images, labels = _epoch(ds)
            np.testing.assert_array_equal(images, serving)
            np.testing.assert_array_equal(labels, records[schema.LABEL].numpy())


@pytest.mark.parametrize("cache", [False, True])
def test_training_crops_and_augmentation_change_every_epoch(tfrecord_dataset, cache):
    # Under a global seed, stateful random ops in tf.data repeat every epoch; the
    # pipeline's must not.
    tf.random.set_seed(1)
    ds = data.make_dataset(tfrecord_dataset, "train", SIZE, 8, training=True, seed=3, cache=cache)
    first, _ = _epoch(ds)
    second, _ = _epoch(ds)
    distance = np.abs(first[:, None] - second[None, :]).reshape(len(first), len(second), -1)
    # No image of the second epoch is an image of the first.
    assert distance.max(axis=2).min() > 1.0


def test_evaluation_batches_are_the_same_every_iteration(tfrecord_dataset):
    ds = data.make_dataset(tfrecord_dataset, "valid", SIZE, 4)
    first, second = _epoch(ds), _epoch(ds)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_augmentation_is_drawn_per_image():
    # A left-to-right ramp: flipped images run right-to-left, and brightness and contrast
    # (positive factors) keep the direction.
    ramp = tf.tile(tf.linspace(60.0, 190.0, SIZE)[None, None, :, None], [64, SIZE, 1, 3])
    out = data.augment_batch(ramp, tf.random.Generator.from_seed(0)).numpy()
    flipped = out[:, :, :4].mean(axis=(1, 2, 3)) > out[:, :, -4:].mean(axis=(1, 2, 3))
    assert 0 < flipped.sum() < len(out)
    # Contrast keeps an image's mean, brightness its range: both vary from image to image.
    assert out.mean(axis=(1, 2, 3)).std() > 5.0
    assert np.ptp(out, axis=(1, 2, 3)).std() > 3.0
    assert out.min() >= 0.0 and out.max() <= 255.0


def test_jitter_is_tf_image_flip_brightness_then_contrast():
    images = tf.random.uniform([3, 8, 8, 3], 0.0, 255.0, seed=0)
    flip = tf.constant([True, False, True])[:, None, None, None]
    delta = tf.constant([-30.0, 5.0, 40.0])[:, None, None, None]
    factor = tf.constant([0.8, 1.0, 1.2])[:, None, None, None]
    expected = []
    for i in range(3):
        image = tf.image.flip_left_right(images[i]) if bool(flip[i, 0, 0, 0]) else images[i]
        image = tf.image.adjust_brightness(image, float(delta[i, 0, 0, 0]))
        image = tf.image.adjust_contrast(image, float(factor[i, 0, 0, 0]))
        expected.append(tf.clip_by_value(image, 0.0, 255.0))
    got = data._jitter(images, flip, delta, factor)
    np.testing.assert_allclose(got.numpy(), tf.stack(expected).numpy(), atol=1e-3)


def test_random_crop_windows_are_inception_style_and_inside_the_image():
    generator = tf.random.Generator.from_seed(0)
    shape = tf.constant([120, 200, 3])
    windows = np.array([data.random_crop_window(shape, generator).numpy() for _ in range(100)])
    y, x, h, w = windows.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= 120).all() and (x + w <= 200).all()
    area = h * w / (120 * 200)
    assert area.min() >= 0.24 and area.max() <= 1.0
    assert (w / h).min() >= 0.7 and (w / h).max() <= 1.4
    assert len({tuple(v) for v in windows}) > 90


@pytest.mark.parametrize("height,width", [(20, 24), (90, 40), (150, 120)])
def test_training_resize_matches_serving_resize(height, width):
    encoded = _jpeg(height, width)
    serving = preprocessing.decode_and_resize(encoded, SIZE)
    got = data.resize(tf.io.decode_jpeg(encoded, channels=3), SIZE)
    np.testing.assert_allclose(got.numpy(), serving.numpy(), atol=0.01)


def test_decoded_crop_is_that_window_of_the_image():
    encoded = _jpeg(80, 100)
    full = tf.io.decode_jpeg(encoded, channels=3).numpy()
    for y, x, h, w in [(10, 20, 30, 40), (16, 16, 32, 32), (0, 0, 80, 100)]:
        crop = tf.image.decode_and_crop_jpeg(encoded, [y, x, h, w], channels=3).numpy()
        assert crop.shape == (h, w, 3)
        # Chroma upsampling lacks the neighbours outside the window at its left and right
        # edges; every other pixel is the full decode's.
        np.testing.assert_array_equal(crop[:, 1:-1], full[y : y + h, x + 1 : x + w - 1])


def test_training_cache_keeps_images_small_but_croppable():
    big = data._decode_for_cache(_jpeg(300, 150), SIZE)
    small = data._decode_for_cache(_jpeg(50, 60), SIZE)
    assert big.dtype == tf.uint8 and tuple(big.shape) == (2 * SIZE, SIZE, 3)
    assert tuple(small.shape) == (50, 60, 3)


def test_missing_split_is_a_clear_error(tfrecord_dataset):
    with pytest.raises(FileNotFoundError, match="no holdout shards under"):
        data.make_dataset(tfrecord_dataset, "holdout", SIZE, 4)
