"""The train stage's tf.data input pipeline: what it yields, and that it yields it right."""

import collections
import io
import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.classification import schema
from components.common import labels as label_io, preprocessing, schema as common_schema
from components.common.io import read_json
from components.train import augmentation, data
from components.train.augmentation import Augmentation, augment_batch

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
    files = common_schema.shard_files(dataset_dir, split)
    serialized = list(common_schema.read_records(files))
    return schema.parse_examples(tf.stack(serialized))


def _jpeg(height: int, width: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _stream(ds: tf.data.Dataset, images: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``images`` images and labels of a fresh iterator over an endless ``ds``."""
    first, labels = _epoch(ds.take(math.ceil(images / batch_size)))
    return first[:images], labels[:images]


def test_evaluation_batches_have_the_promised_shapes_types_and_range(tfrecord_dataset):
    count = common_schema.split_size(tfrecord_dataset, "train")
    ds = data.make_dataset(tfrecord_dataset, "train", SIZE, 8)
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


def test_training_is_an_endless_stream_of_full_batches(tfrecord_dataset):
    count = common_schema.split_size(tfrecord_dataset, "train")
    ds = data.make_dataset(tfrecord_dataset, "train", SIZE, 8, training=True, seed=0)
    assert int(ds.cardinality()) == tf.data.INFINITE_CARDINALITY
    steps = data.steps_per_epoch(count, 8)
    assert steps == math.ceil(count / 8)
    batches = list(ds.take(3 * steps))
    assert len(batches) == 3 * steps
    for images, labels in batches:
        assert images.shape == (8, SIZE, SIZE, 3) and images.dtype == tf.float32
        assert labels.shape == (8,) and labels.dtype == tf.int64
    images = np.concatenate([b[0].numpy() for b in batches])
    assert images.min() >= 0.0 and images.max() <= 255.0
    assert images.std() > 10


@pytest.mark.parametrize("split,cache", [("valid", False), ("test", True)])
def test_evaluation_sees_every_example_once_per_pass(tfrecord_dataset, split, cache):
    expected = read_json(os.path.join(tfrecord_dataset, "stats.json"))["classes"][split]
    ds = data.make_dataset(tfrecord_dataset, split, SIZE, 5, cache=cache)
    for _ in range(2):
        _, labels = _epoch(ds)
        assert _class_counts(tfrecord_dataset, split, labels) == expected


@pytest.mark.parametrize("cache", [False, True])
def test_training_stream_draws_every_example_once_per_epoch(tfrecord_dataset, cache):
    # Epochs run into each other (the shuffle buffer spans an epoch's end), so over four
    # epochs' worth of images each class is short or over by less than one epoch.
    expected = read_json(os.path.join(tfrecord_dataset, "stats.json"))["classes"]["train"]
    count = common_schema.split_size(tfrecord_dataset, "train")
    ds = data.make_dataset(tfrecord_dataset, "train", SIZE, 5, training=True, seed=1, cache=cache)
    _, labels = _stream(ds, 4 * count, 5)
    got = _class_counts(tfrecord_dataset, "train", labels)
    for name, n in expected.items():
        assert 3 * n < got[name] < 5 * n or n == got[name] == 0, (name, got, expected)


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
    count = common_schema.split_size(tfrecord_dataset, "train")
    # Two iterators, as two calls of fit (the training phases) make them.
    first, _ = _stream(ds, count, 8)
    second, _ = _stream(ds, count, 8)
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
    out = augment_batch(ramp, Augmentation(), tf.random.Generator.from_seed(0)).numpy()
    flipped = out[:, :, :4].mean(axis=(1, 2, 3)) > out[:, :, -4:].mean(axis=(1, 2, 3))
    assert 0 < flipped.sum() < len(out)
    # Contrast keeps an image's mean, brightness its range: both vary from image to image.
    assert out.mean(axis=(1, 2, 3)).std() > 5.0
    assert np.ptp(out, axis=(1, 2, 3)).std() > 3.0
    assert out.min() >= 0.0 and out.max() <= 255.0


def test_jitter_is_tf_image_flip_brightness_then_contrast():
    images = tf.random.uniform([3, 8, 8, 3], 0.0, 255.0, seed=0)
    flip = tf.constant([True, False, True])[:, None, None, None]
    no_flip = tf.zeros_like(flip)
    delta = tf.constant([-30.0, 5.0, 40.0])[:, None, None, None]
    factor = tf.constant([0.8, 1.0, 1.2])[:, None, None, None]
    expected = []
    for i in range(3):
        image = tf.image.flip_left_right(images[i]) if bool(flip[i, 0, 0, 0]) else images[i]
        image = tf.image.adjust_brightness(image, float(delta[i, 0, 0, 0]))
        image = tf.image.adjust_contrast(image, float(factor[i, 0, 0, 0]))
        expected.append(tf.clip_by_value(image, 0.0, 255.0))
    got = augmentation._jitter(images, flip, no_flip, delta, factor)
    np.testing.assert_allclose(got.numpy(), tf.stack(expected).numpy(), atol=1e-3)


def test_random_crop_windows_are_inception_style_and_inside_the_image():
    generator = tf.random.Generator.from_seed(0)
    shape = tf.constant([120, 200, 3])
    crop = Augmentation(crop_area_min=0.25)
    windows = np.array(
        [augmentation.random_crop_window(shape, crop, generator).numpy() for _ in range(100)]
    )
    y, x, h, w = windows.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= 120).all() and (x + w <= 200).all()
    area = h * w / (120 * 200)
    assert area.min() >= 0.24 and area.max() <= 1.0
    assert (w / h).min() >= 0.7 and (w / h).max() <= 1.4
    assert len({tuple(v) for v in windows}) > 90


def _checkerboard(height: int, width: int) -> tf.Tensor:
    """Alternating 0 and 255 pixels: the pattern that aliases worst when shrunk."""
    board = (np.indices((height, width)).sum(axis=0) % 2 * 255).astype(np.uint8)
    return tf.constant(np.repeat(board[..., None], 3, axis=-1))


@pytest.mark.parametrize("height,width", [(96, 96), (100, 70), (33, 96)])
def test_resize_anti_aliases_every_axis_that_shrinks(height, width):
    # Averaged over its area, each output pixel of a 1-pixel checkerboard is close to
    # grey; plain bilinear picks single pixels and keeps the full 0..255 swing.
    got = preprocessing.resize(_checkerboard(height, width), SIZE).numpy()
    assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.float32
    assert abs(got.mean() - 127.5) < 8
    plain = tf.image.resize(_checkerboard(height, width), [SIZE, SIZE]).numpy()
    assert got.std() < 25 and plain.std() > 2 * got.std()


@pytest.mark.parametrize("height,width", [(20, 24), (32, 8), (32, 32)])
def test_resize_enlarges_bilinearly(height, width):
    image = tf.io.decode_jpeg(_jpeg(height, width), channels=3)
    got = preprocessing.resize(image, SIZE).numpy()
    np.testing.assert_allclose(got, tf.image.resize(image, [SIZE, SIZE]).numpy(), atol=1e-3)


@pytest.mark.parametrize("height,width", [(150, 120), (90, 40), (200, 20)])
def test_resize_is_close_to_triangle_antialiasing(height, width):
    image = tf.io.decode_jpeg(_jpeg(height, width), channels=3)
    got = preprocessing.resize(image, SIZE).numpy()
    reference = tf.image.resize(image, [SIZE, SIZE], antialias=True).numpy()
    plain = tf.image.resize(image, [SIZE, SIZE]).numpy()
    # On pixel noise, the hardest case: far closer than unfiltered bilinear.
    assert np.abs(got - reference).mean() * 2 < np.abs(plain - reference).mean()
    assert got.min() >= 0 and got.max() <= 255


def test_random_crop_of_the_whole_image_is_the_serving_input():
    encoded = _jpeg(90, 40)
    window = tf.constant([0, 0, 90, 40])
    crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    np.testing.assert_array_equal(
        preprocessing.resize(crop, SIZE).numpy(),
        preprocessing.decode_and_resize(encoded, SIZE).numpy(),
    )


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


def test_gzip_shards_of_earlier_versions_are_still_read(tfrecord_dataset, tmp_path):
    # Earlier versions wrote <split>-*.tfrecord.gz; a cached create_tfrecords output of
    # theirs must keep working with this train and evaluate.
    legacy = str(tmp_path / "legacy")
    shutil.copytree(tfrecord_dataset, legacy)
    for path in common_schema.shard_files(legacy, "valid"):
        with tf.io.TFRecordWriter(path + ".gz", options="GZIP") as writer:
            for record in common_schema.read_records([path]):
                writer.write(record.numpy())
        os.remove(path)
    files = common_schema.shard_files(legacy, "valid")
    assert files and all(f.endswith(".tfrecord.gz") for f in files)
    assert common_schema.compression_type(files) == "GZIP"
    old, new = (_epoch(data.make_dataset(d, "valid", SIZE, 4)) for d in (legacy, tfrecord_dataset))
    np.testing.assert_array_equal(old[0], new[0])
    np.testing.assert_array_equal(old[1], new[1])
    with pytest.raises(ValueError, match="mixes gzip and uncompressed"):
        common_schema.compression_type(
            [files[0], common_schema.shard_files(tfrecord_dataset, "train")[0]]
        )


def test_training_on_an_empty_split_is_a_clear_error(tfrecord_dataset, tmp_path):
    empty = str(tmp_path / "empty")
    shutil.copytree(tfrecord_dataset, empty)
    stats = read_json(os.path.join(empty, "stats.json"))
    stats["splits"]["train"] = 0
    with open(os.path.join(empty, "stats.json"), "w") as f:
        json.dump(stats, f)
    with pytest.raises(ValueError, match="the train split of .* has no images to train on"):
        data.make_dataset(empty, "train", SIZE, 4, training=True)


def test_repeated_evaluation_passes_give_full_batches_endlessly(tfrecord_dataset):
    """What every worker of a multi-worker run validates on: never a short batch."""
    valid = common_schema.split_size(tfrecord_dataset, "valid")
    ds = data.make_dataset(tfrecord_dataset, "valid", 32, 5, repeat=True)
    batches = list(ds.take(3 * valid))
    assert all(images.shape[0] == 5 and labels.shape[0] == 5 for images, labels in batches)
    once = [
        int(x) for _, labels in data.make_dataset(tfrecord_dataset, "valid", 32, 5) for x in labels
    ]
    repeated = [int(x) for _, labels in batches for x in labels]
    assert repeated[: len(once)] == once and repeated[len(once) : 2 * len(once)] == once
