"""tf.data input pipelines over the TFRecord shards written by create_tfrecords.

Both pipelines read the shards in parallel (interleave), let tf.data tune every parallel
step (AUTOTUNE) and end in ``prefetch``, so batches are ready when the accelerator asks;
Keras / tf.distribute copy them to the device.

Training: an endless stream (see ``make_dataset``) of shards in random order, examples
shuffled while still encoded (cheap to buffer), then the augmentation its parameters ask
for (``augmentation.Augmentation``): a fused random crop that decodes only its window, then
flips, rotation and brightness/contrast on whole batches, drawn per image. Randomness
comes from one ``tf.random.Generator``: its state lives on across iterations, so every
epoch gets new crops and flips even under a global seed, and it keeps the dataset's
source the shard files, which tf.distribute's FILE auto-sharding needs.

Evaluation: records in the files' order, decoded with
``components.common.preprocessing.decode_and_resize``, the function the exported serving
model runs, so evaluation sees exactly what serving sees.

``cache=True`` keeps decoded images in memory after the first epoch: for evaluation the
final float32 images (``image_size``² x 3 x 4 bytes each); for training the decoded,
un-augmented images as uint8, shrunk (never enlarged) to fit ``CACHE_SCALE * image_size``
a side with their aspect ratio, from which the random crop is taken every epoch. The
training cache thus holds at most as many bytes per image as the evaluation cache, and a
crop of a quarter of the area still has about ``image_size`` pixels a side.
"""

from __future__ import annotations

import math

import tensorflow as tf

from components.classification import schema
from components.common import preprocessing, schema as common_schema
from components.train.augmentation import (
    Augmentation,
    augment_batch,
    decode_random_crop,
    random_crop,
)

AUTOTUNE = tf.data.AUTOTUNE
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
    compression = common_schema.compression_type(files)
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
    augmentation: Augmentation | None = None,
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
        augmentation: For training: how images are varied; None for the defaults,
            ``Augmentation.off()`` for none. Evaluation never varies them.

    Returns:
        A dataset of float32 images ``[batch, image_size, image_size, 3]`` in
        ``[0, 255]`` and int64 labels ``[batch]``; for evaluation with the known number
        of batches, for training endless.

    Raises:
        FileNotFoundError: The split has no shards.
        ValueError: Training on a split without images.
    """
    files = common_schema.shard_files(dataset_dir, split)
    count = common_schema.split_size(dataset_dir, split)
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
    augmentation = augmentation or Augmentation()
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
    # Repeating before the shuffle makes one endless stream: the shuffle buffer never
    # drains and refills at an epoch's end, so the accelerator does not wait there. At
    # most one epoch in the buffer: examples mix only with the next epoch's.
    ds = ds.repeat().shuffle(min(shuffle_buffer, count), seed=seed)
    ds = ds.map(
        lambda image, label: (
            _training_image(image, image_size, cache, augmentation, generator),
            label,
        ),
        num_parallel_calls=AUTOTUNE,
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(
        lambda images, labels: (augment_batch(images, augmentation, generator), labels),
        num_parallel_calls=AUTOTUNE,
    )
    return ds.with_options(_options(training)).prefetch(AUTOTUNE)


def _training_image(
    image: tf.Tensor,
    image_size: int,
    cached: bool,
    augmentation: Augmentation,
    generator: tf.random.Generator,
) -> tf.Tensor:
    """One training image at ``image_size``: a random crop, or the whole image as serving
    decodes it; from the encoded bytes, or from the decoded cache."""
    if augmentation.crops:
        crop = random_crop if cached else decode_random_crop
        return crop(image, image_size, augmentation, generator)
    if cached:
        return preprocessing.resize(image, image_size)
    return preprocessing.decode_and_resize(image, image_size)
