"""tf.data input pipelines over the TFRecord shards written by create_tfrecords.

Both pipelines read the shards in parallel (interleave), let tf.data tune every parallel
step (AUTOTUNE) and end in ``prefetch``, so batches are ready when the accelerator asks;
Keras / tf.distribute copy them to the device.

Training: an endless stream (see ``make_dataset``) of shards in random order, examples
shuffled while still encoded (cheap to buffer), then a fused random crop:
``sample_distorted_bounding_box`` picks an Inception-style window (``AREA_RANGE``,
``ASPECT_RATIO_RANGE``) from the JPEG header's shape and
``decode_and_crop_jpeg`` decodes only that window, which is resized to ``image_size`` by
``components.common.preprocessing.resize``, as serving resizes whole images.
Flip and brightness/contrast jitter then run on whole batches, drawn per image.
Randomness comes from one ``tf.random.Generator``: its state lives on across iterations,
so every epoch gets new crops and flips even under a global seed, and it keeps the
dataset's source the shard files, which tf.distribute's FILE auto-sharding needs.

Evaluation: records in the files' order, decoded with
``components.common.preprocessing.decode_and_resize``, the function the exported serving
model runs, so evaluation sees exactly what serving sees.

``cache=True`` keeps decoded images in memory after the first epoch: for evaluation the
final float32 images (``image_size``² x 3 x 4 bytes each); for training the decoded,
un-augmented images as uint8, shrunk (never enlarged) to fit ``CACHE_SCALE * image_size``
a side with their aspect ratio, from which the random crop is taken every epoch. The
training cache thus holds at most as many bytes per image as the evaluation cache, and a
crop of the smallest area (a quarter) still has about ``image_size`` pixels a side.
"""

from __future__ import annotations

import math

import tensorflow as tf

from components.common import preprocessing, schema

AUTOTUNE = tf.data.AUTOTUNE
AREA_RANGE = (0.25, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
BRIGHTNESS_DELTA = 20.0
CONTRAST_RANGE = (0.85, 1.15)
CACHE_SCALE = 2
# Examples parsed per parse_example call: parsing in batches costs less per record.
_PARSE_BATCH = 256


def _options(training: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    # Parallelism comes from many elements in flight, not from threads inside one op.
    options.threading.max_intra_op_parallelism = 1
    # Training order is random anyway; let a slow element not hold up the ones behind it.
    options.deterministic = not training
    return options


def _records(files: list[str], training: bool, seed: int | None) -> tf.data.Dataset:
    """Serialised Examples of ``files``, read in parallel; the files in random order for
    training (a new order every pass)."""
    compression = schema.compression_type(files)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed)
    return ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(len(files), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=not training,
    )


def _encoded_and_labels(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``(encoded image, label)`` elements, parsed ``_PARSE_BATCH`` records at a time."""

    def parse(serialized):
        features = schema.parse_examples(serialized)
        return features[schema.ENCODED], features[schema.LABEL]

    return ds.batch(_PARSE_BATCH).map(parse, num_parallel_calls=AUTOTUNE).unbatch()


def random_crop_window(shape: tf.Tensor, generator: tf.random.Generator) -> tf.Tensor:
    """An Inception-style random crop ``[y, x, height, width]`` of an image of ``shape``."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.zeros([1, 0, 4]),
        seed=generator.make_seeds(1)[:, 0],
        min_object_covered=0.0,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.concat([begin[:2], size[:2]], axis=0)


def decode_random_crop(
    encoded: tf.Tensor, image_size: int, generator: tf.random.Generator
) -> tf.Tensor:
    """Decodes only a random window of a JPEG and resizes it: float32 in ``[0, 255]``."""
    window = random_crop_window(tf.image.extract_jpeg_shape(encoded), generator)
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    return preprocessing.resize(image, image_size)


def random_crop(image: tf.Tensor, image_size: int, generator: tf.random.Generator) -> tf.Tensor:
    """``decode_random_crop`` for an already decoded image."""
    window = random_crop_window(tf.shape(image), generator)
    crop = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])
    return preprocessing.resize(crop, image_size)


def _decode_for_cache(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """A JPEG decoded to uint8 and shrunk, if needed, to fit ``CACHE_SCALE * image_size``."""
    image = tf.io.decode_jpeg(encoded, channels=3)
    limit = CACHE_SCALE * image_size
    shape = tf.shape(image)
    return tf.cond(
        tf.reduce_max(shape[:2]) > limit,
        lambda: tf.cast(
            tf.round(
                tf.image.resize(image, [limit, limit], preserve_aspect_ratio=True, method="area")
            ),
            tf.uint8,
        ),
        lambda: image,
    )


@tf.function(jit_compile=True)
def _jitter(images, flip, delta, factor):
    # XLA fuses this into about one pass over the batch; as separate ops it is several
    # passes and, at 224 px, slower than decoding.
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    # Brightness then contrast as tf.image does them: ((x + delta) - mean') * factor + mean'
    # with mean' = mean + delta, that is x * factor + (mean * (1 - factor) + delta).
    return tf.clip_by_value(images * factor + (mean * (1.0 - factor) + delta), 0.0, 255.0)


def augment_batch(images: tf.Tensor, generator: tf.random.Generator) -> tf.Tensor:
    """Random flip, brightness and contrast, drawn per image, applied to a whole batch.

    Args:
        images: float32 ``[batch, height, width, 3]`` in ``[0, 255]``.
        generator: the source of randomness.

    Returns:
        The augmented batch, clipped to ``[0, 255]``.
    """
    per_image = [tf.shape(images)[0], 1, 1, 1]
    flip = generator.uniform(per_image) < 0.5
    delta = generator.uniform(per_image, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
    factor = generator.uniform(per_image, *CONTRAST_RANGE)
    # tf.data runs on the host; keep the XLA cluster there on a machine with a GPU too.
    with tf.device("/device:CPU:0"):
        return _jitter(images, flip, delta, factor)


def steps_per_epoch(count: int, batch_size: int) -> int:
    """Batches of the endless training stream that make one epoch of ``count`` images."""
    return max(1, math.ceil(count / batch_size))


def make_dataset(
    dataset_dir: str,
    split: str,
    image_size: int,
    batch_size: int,
    training: bool = False,
    shuffle_buffer: int = 2048,
    seed: int | None = None,
    cache: bool = False,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of ``(images, labels)`` of one split.

    For evaluation, one pass in the files' order; for training, an endless stream of
    full batches: take ``steps_per_epoch(count, batch_size)`` of them per epoch (Keras:
    ``fit(..., steps_per_epoch=...)``, which keeps one iterator across epochs).

    Args:
        dataset_dir: A dataset directory written by create_tfrecords.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        image_size: Side of the square images the pipeline yields.
        batch_size: Images per batch; for evaluation the last batch may be smaller.
        training: Shuffle, random-crop and augment (else: the serving model's decoding,
            in the files' order).
        shuffle_buffer: Records in the shuffle buffer (training), at most the split's size.
        seed: Seed of the shuffles and the augmentation; ``None`` for a random one.
        cache: Keep decoded images in memory after the first epoch (see the module's
            docstring for what is kept); only when the split fits in memory.
        repeat: For evaluation: passes repeated endlessly in full batches, so that every
            worker of a multi-worker run can take the same number of them (the caller
            says how many).

    Returns:
        A dataset of float32 images ``[batch, image_size, image_size, 3]`` in
        ``[0, 255]`` and int64 labels ``[batch]``; for evaluation with the known number
        of batches, for training endless.

    Raises:
        FileNotFoundError: The split has no shards.
        ValueError: Training on a split without images.
    """
    files = schema.shard_files(dataset_dir, split)
    count = schema.split_size(dataset_dir, split)
    ds = _encoded_and_labels(_records(files, training, seed))
    # Fails loudly on a stale stats.json; for evaluation it also gives Keras the number
    # of batches (progress bars, no "ran out of data" warning).
    ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    if not training:
        ds = ds.map(
            lambda encoded, label: (preprocessing.decode_and_resize(encoded, image_size), label),
            num_parallel_calls=AUTOTUNE,
        )
        if cache:
            ds = ds.cache()
        ds = ds.repeat().batch(batch_size, drop_remainder=True) if repeat else ds.batch(batch_size)
        return ds.with_options(_options(training)).prefetch(AUTOTUNE)

    if count == 0:
        raise ValueError(f"the {split} split of {dataset_dir} has no images to train on")
    generator = (
        tf.random.Generator.from_non_deterministic_state()
        if seed is None
        else tf.random.Generator.from_seed(seed)
    )
    if cache:
        ds = ds.map(
            lambda encoded, label: (_decode_for_cache(encoded, image_size), label),
            num_parallel_calls=AUTOTUNE,
        ).cache()
        crop = random_crop
    else:
        crop = decode_random_crop
    # Repeating before the shuffle makes one endless stream: the shuffle buffer never
    # drains and refills at an epoch's end, so the accelerator does not wait there. At
    # most one epoch in the buffer: examples mix only with the next epoch's.
    ds = ds.repeat().shuffle(min(shuffle_buffer, count), seed=seed)
    ds = ds.map(
        lambda image, label: (crop(image, image_size, generator), label),
        num_parallel_calls=AUTOTUNE,
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(
        lambda images, labels: (augment_batch(images, generator), labels),
        num_parallel_calls=AUTOTUNE,
    )
    return ds.with_options(_options(training)).prefetch(AUTOTUNE)
