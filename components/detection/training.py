"""Training the detector on create_tfrecords' detection records.

The input pipeline reads the Object Detection API's records (``schema``), decodes each
JPEG, stretches it to the model's square input (normalized boxes are unchanged by it),
applies the box-aware augmentation (a horizontal flip that mirrors the boxes, and colour
jitter that leaves them alone) and encodes the family's targets: CenterNet's maps
(``centernet``, the default) or KerasHub's padded boxes (``keras_hub_detectors``).

``train`` fits the model with Keras' own callbacks: the best epoch's weights by
validation loss (kept, and restored at the end), early stopping, TensorBoard, and a
BackupAndRestore folder (``backup_dir``) from which a preempted run resumes. It writes a
model directory as the classification stage does (``common.model_dir``): ``model.keras``,
``labels.txt``, ``training_config.json``, ``history.csv``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from components.common import (
    io,
    labels as labels_lib,
    model_dir as model_dir_lib,
    preprocessing,
    schema as common_schema,
)
from components.detection import centernet, keras_hub_detectors, schema
from components.train import distribution, hardware
from components.train.backbones import build_backbone, is_pretrained

log = logging.getLogger(__name__)


def _image_and_boxes(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The decoded image (uint8, its own size), boxes ``[n, 4]`` and classes from 0."""
    example = schema.parse_example(serialized)
    image = tf.io.decode_jpeg(example[schema.ENCODED], channels=3)
    boxes = tf.stack(
        [example[k] for k in (schema.YMIN, schema.XMIN, schema.YMAX, schema.XMAX)], axis=1
    )
    classes = tf.cast(example[schema.CLASS_LABEL], tf.int32) - 1
    return image, tf.reshape(boxes, [-1, 4]), classes


def scale_and_crop(
    image: tf.Tensor,
    boxes: tf.Tensor,
    classes: tf.Tensor,
    scale_min: float,
    scale_max: float,
    min_visible: float = 0.3,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A random window of the image, its side ``scale_min``..``scale_max`` times the
    image's: under 1 it crops (objects grow, some are cut), over 1 it zooms out (the image
    shrinks inside a grey border, objects shrink). Boxes follow the window and are clipped
    to it; a box with less than ``min_visible`` of its area left in the window is dropped
    with its class (CenterNet and the Object Detection API's random crop do the same).

    The window is cut from the decoded pixels, so the caller resizes it as serving
    resizes a whole image (no train/serve skew in the resampling). Why not Keras 3's
    bounding-box layers (``RandomCrop``, ``RandomZoom`` with ``bounding_box_format``): they
    work on the resized image, resampling it twice, and their clipping
    (``keras.utils.bounding_boxes.clip_to_image_size``) drops only boxes left with no
    area, so a sliver of an object at the border would still be trained as the object."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = tf.random.uniform([], scale_min, scale_max)
    win_h = tf.maximum(tf.round(scale * height), 1.0)
    win_w = tf.maximum(tf.round(scale * width), 1.0)
    # The window's top-left corner: inside the image when cropping, the image inside the
    # window when zooming out.
    top = tf.round(
        tf.random.uniform([], tf.minimum(0.0, height - win_h), tf.maximum(0.0, height - win_h))
    )
    left = tf.round(
        tf.random.uniform([], tf.minimum(0.0, width - win_w), tf.maximum(0.0, width - win_w))
    )
    pad_top = tf.cast(tf.maximum(0.0, -top), tf.int32)
    pad_left = tf.cast(tf.maximum(0.0, -left), tf.int32)
    pad_bottom = tf.cast(tf.maximum(0.0, top + win_h - height), tf.int32)
    pad_right = tf.cast(tf.maximum(0.0, left + win_w - width), tf.int32)
    padded = tf.pad(
        image, [[pad_top, pad_bottom], [pad_left, pad_right], [0, 0]], constant_values=128
    )
    y0 = tf.cast(tf.maximum(0.0, top), tf.int32)
    x0 = tf.cast(tf.maximum(0.0, left), tf.int32)
    window = padded[y0 : y0 + tf.cast(win_h, tf.int32), x0 : x0 + tf.cast(win_w, tf.int32)]
    moved = boxes * tf.stack([height, width, height, width]) - tf.stack([top, left, top, left])
    moved = moved / tf.stack([win_h, win_w, win_h, win_w])
    clipped = tf.clip_by_value(moved, 0.0, 1.0)

    def area(b):
        return tf.maximum(b[:, 2] - b[:, 0], 0.0) * tf.maximum(b[:, 3] - b[:, 1], 0.0)

    keep = area(clipped) >= min_visible * tf.maximum(area(moved), 1e-12)
    keep = tf.logical_and(keep, area(clipped) > 0)
    return window, tf.boolean_mask(clipped, keep), tf.boolean_mask(classes, keep)


def augment(image: tf.Tensor, boxes: tf.Tensor, flip: bool = True, colour: bool = True):
    """A random horizontal flip (boxes mirrored with the pixels) and brightness and
    contrast jitter (boxes unchanged), on a resized float image."""
    if flip:
        mirrored = tf.random.uniform([]) < 0.5
        image = tf.cond(mirrored, lambda: image[:, ::-1, :], lambda: image)
        boxes = tf.cond(
            mirrored,
            lambda: tf.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], axis=1),
            lambda: boxes,
        )
    if colour:
        image = tf.image.random_brightness(image, 25.0)
        image = tf.image.random_contrast(image, 0.8, 1.2)
        image = tf.clip_by_value(image, 0.0, 255.0)
    return image, boxes


def make_dataset(
    dataset_dir: str,
    split: str,
    num_classes: int,
    image_size: int,
    batch_size: int,
    training: bool,
    flip: bool = True,
    colour: bool = True,
    scale_min: float = 1.0,
    scale_max: float = 1.0,
    family: str = "centernet",
    input_scale: Sequence[float] = (),
    input_offset: Sequence[float] = (),
) -> tf.data.Dataset:
    """Batches of ``(images, targets)`` of one split; endless and shuffled when
    ``training``. ``family`` picks the targets (CenterNet's maps, or KerasHub's padded
    pixel boxes and labels, with the images scaled by ``input_scale`` and
    ``input_offset``)."""
    files = common_schema.shard_files(dataset_dir, split)
    dataset = common_schema.read_records(files)
    if training:
        dataset = dataset.shuffle(2048).repeat()

    def to_example(serialized):
        image, boxes, classes = _image_and_boxes(serialized)
        if training and (scale_min, scale_max) != (1.0, 1.0):
            image, boxes, classes = scale_and_crop(image, boxes, classes, scale_min, scale_max)
        image = preprocessing.resize(image, image_size)
        if training:
            image, boxes = augment(image, boxes, flip, colour)
        if family == "centernet":
            return image, centernet.encode_targets(boxes, classes, num_classes, image_size)
        return (
            keras_hub_detectors.scale_images(image, input_scale, input_offset),
            keras_hub_detectors.encode_targets(boxes, classes, image_size),
        )

    dataset = dataset.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    if family == "centernet":
        dataset = dataset.batch(batch_size, drop_remainder=training)
    else:
        # Images hold different numbers of boxes: -1 rows pad them to the batch's most.
        dataset = dataset.padded_batch(
            batch_size,
            padding_values=(0.0, {"boxes": -1.0, "labels": -1.0}),
            drop_remainder=training,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def train(
    dataset_dir: str,
    model_dir: str,
    backbone: str = "MobileNetV3Small",
    weights: str = "",
    image_size: int = 192,
    batch_size: int = 16,
    epochs: int = 30,
    learning_rate: float = 0.002,
    early_stopping_patience: int = 8,
    augment_flip: bool = True,
    augment_colour: bool = True,
    scale_min: float = 1.0,
    scale_max: float = 1.0,
    upsampling: str = "fpn",
    family: str = "centernet",
    preset: str = "",
    precision: str = "auto",
    backup_dir: str = "",
) -> dict:
    """Trains a detector and writes its model directory.

    It trains with the classification stage's strategy (``components.train.distribution``:
    one device, every GPU of the machine, or several workers from ``TF_CONFIG`` or
    Vertex AI's ``CLUSTER_SPEC``; ``batch_size`` is the global batch) and precision.

    Args:
        dataset_dir: The dataset of ``create_tfrecords`` for detection.
        model_dir: Where to write the model directory.
        backbone: The ``centernet`` family's keras.applications backbone
            (``components.train.backbones``).
        weights: The ``centernet`` family's backbone weights: ``imagenet``, a weights
            file of the backbone, or empty for random initialisation
            (BatchNormalization's momentum is then lowered to 0.9, for every family).
        image_size: The model's square input side (a multiple of 32).
        batch_size: Images per step.
        epochs: Most epochs (one is a pass over the train split).
        learning_rate: Adam's peak rate, then a cosine decay over the epochs.
        early_stopping_patience: Epochs without a better validation loss before
            stopping; 0 never stops early.
        augment_flip: Random horizontal flips, boxes mirrored.
        augment_colour: Random brightness and contrast.
        scale_min: Smallest side of a random training window, as a share of the image's
            side (under 1: crops that enlarge objects); 1 with ``scale_max`` 1: whole
            images.
        scale_max: Largest side of the window (over 1: zooming out, objects shrink inside
            a grey border).
        upsampling: The ``centernet`` head's upsampling: ``fpn``, ``bilinear`` or
            ``transposed`` (``centernet.build_detector``).
        family: The detector: ``centernet`` (anchor-free, trains from random
            initialisation on CPUs) or ``retinanet`` (KerasHub's RetinaNet, for
            fine-tuning a COCO preset on a GPU; ``keras_hub_detectors``).
        preset: The ``retinanet`` family's KerasHub preset (``retinanet_resnet50_fpn_coco``,
            downloaded from Kaggle Models, or a preset folder); empty: a small RetinaNet
            from random initialisation. A preset fine-tunes well at a learning rate
            near 1e-4.
        precision: ``auto`` (mixed float16 on GPUs with Tensor Cores, else float32),
            ``float32``, ``mixed_float16`` or ``mixed_bfloat16``
            (``components.train.hardware``, as the classification train stage).
        backup_dir: A durable folder to back each epoch up to and resume from after a
            preemption; empty: a folder in ``model_dir``.

    Returns:
        The training config written to ``training_config.json`` (with the epochs run and
        the best validation loss).
    """
    # The strategy first: MultiWorkerMirroredStrategy must come before other TF ops.
    tf_config = distribution.load_tf_config()
    strategy = distribution.make_strategy(tf_config)
    if image_size % 32 or image_size < 64:
        raise ValueError(f"image_size must be a multiple of 32, at least 64, got {image_size}")
    if batch_size < 1 or epochs < 1:
        raise ValueError("batch_size and epochs must be >= 1")
    if not 0 < scale_min <= scale_max:
        raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
    if family not in keras_hub_detectors.FAMILIES:
        raise ValueError(f"family must be one of {keras_hub_detectors.FAMILIES}, got {family!r}")
    if preset and family == "centernet":
        raise ValueError("preset is a KerasHub family's (family='retinanet'), not centernet's")
    labels = labels_lib.read_labels(io.join(dataset_dir, labels_lib.LABELS_FILE))
    stats = io.read_json(io.join(dataset_dir, common_schema.STATS_FILE))
    train_images = int(stats["splits"]["train"])
    if train_images < batch_size:
        raise ValueError(
            f"the train split has {train_images} images, fewer than batch_size={batch_size}"
        )
    steps = math.ceil(train_images / batch_size)
    policy = hardware.resolve_precision(precision, hardware.gpu_compute_capabilities())
    keras.utils.set_random_seed(0)
    with hardware.dtype_policy(policy), strategy.scope():
        model, scaling = _build_model(
            family, backbone, weights, preset, upsampling, len(labels), image_size
        )
        schedule = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=steps * epochs, alpha=0.05
        )
        if family == "centernet":
            model.compile(
                optimizer=keras.optimizers.Adam(schedule),
                loss=centernet.LOSSES,
                loss_weights=centernet.LOSS_WEIGHTS,
            )
        else:
            # KerasHub's detectors bring their losses (RetinaNet: focal and smooth L1).
            model.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=10.0))
    # Without validation images the training loss picks the best epoch.
    validate = int(stats["splits"]["valid"]) > 0
    monitor = "val_loss" if validate else "loss"
    # Every worker trains; the chief alone writes the model directory.
    out_dir = distribution.worker_dir(model_dir, distribution.is_chief(tf_config), "model")
    io.makedirs(io.join(out_dir, "checkpoints"))
    best = io.join(out_dir, "checkpoints", "best.weights.h5")
    data = functools.partial(
        _split_dataset,
        dataset_dir=dataset_dir,
        num_classes=len(labels),
        image_size=image_size,
        batch_size=batch_size,
        family=family,
        workers=distribution.num_workers(tf_config),
        **scaling,
    )
    start = time.monotonic()
    history = model.fit(
        data("train", True, augment_flip, augment_colour, scale_min, scale_max),
        validation_data=data("valid", False) if validate else None,
        validation_steps=math.ceil(int(stats["splits"]["valid"]) / batch_size)
        if validate
        else None,
        steps_per_epoch=steps,
        epochs=epochs,
        callbacks=_callbacks(out_dir, best, monitor, early_stopping_patience, backup_dir),
        shuffle=False,  # the training stream shuffles itself
        verbose=2,
    )
    seconds = time.monotonic() - start
    model.load_weights(best)
    val_losses = history.history.get(monitor, [])
    best_epoch = int(np.argmin(val_losses)) + 1 if val_losses else 0
    config = {
        "task": "detection",
        "backbone": backbone if family == "centernet" else preset or "small ResNet",
        "weights": weights if family == "centernet" else preset,
        "image_size": image_size,
        "batch_size": batch_size,
        "epochs_run": len(val_losses),
        "best_epoch": best_epoch,
        "monitor": monitor,
        "best_val_loss": float(min(val_losses)) if val_losses else None,
        "train_seconds": round(seconds, 1),
        "images_per_second": round(len(val_losses) * steps * batch_size / seconds, 1),
        "learning_rate": learning_rate,
        "scale_min": scale_min,
        "scale_max": scale_max,
        "upsampling": upsampling,
        "family": family,
        "preset": preset,
        "precision": policy,
        "replicas": strategy.num_replicas_in_sync,
        **scaling,
    }
    model_dir_lib.save_model_dir(model, out_dir, labels, config)
    log.info(
        "detection train: %d epochs, best val_loss %s", len(val_losses), config["best_val_loss"]
    )
    return {**config, "labels": labels}


def _build_model(
    family: str,
    backbone: str,
    weights: str,
    preset: str,
    upsampling: str,
    num_classes: int,
    image_size: int,
) -> tuple[keras.Model, dict]:
    """The family's detector, and the scale and offset of its input (a KerasHub
    preset's; none for CenterNet, whose backbone scales its own input). Without
    pretrained weights BatchNormalization's momentum is lowered to 0.9: at the default,
    inference-mode statistics lag so far behind that the heatmaps stay below any
    threshold."""
    if family == "centernet":
        model = centernet.build_detector(
            build_backbone(backbone, image_size, weights), num_classes, upsampling=upsampling
        )
        scaling, pretrained = {}, is_pretrained(weights)
    else:
        model = keras_hub_detectors.build(family, num_classes, image_size, preset)
        scale, offset = keras_hub_detectors.input_scaling(model)
        scaling, pretrained = {"input_scale": scale, "input_offset": offset}, bool(preset)
    if not pretrained:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    return model, scaling


def _split_dataset(
    split: str,
    training: bool,
    flip: bool = True,
    colour: bool = True,
    scale_min: float = 1.0,
    scale_max: float = 1.0,
    *,
    dataset_dir: str,
    num_classes: int,
    image_size: int,
    batch_size: int,
    family: str,
    workers: int,
    **scaling,
) -> tf.data.Dataset:
    """``make_dataset`` of one split, sharded among ``workers`` as the classification
    stage shards its splits (``distribution.autoshard_policy``)."""
    dataset = make_dataset(
        dataset_dir,
        split,
        num_classes,
        image_size,
        batch_size,
        training,
        flip,
        colour,
        scale_min,
        scale_max,
        family,
        **scaling,
    )
    files = len(common_schema.shard_files(dataset_dir, split))
    return distribution.with_autoshard(dataset, distribution.autoshard_policy(files, workers))


def _callbacks(
    model_dir: str, best: str, monitor: str, patience: int, backup_dir: str
) -> list[keras.callbacks.Callback]:
    """The history CSV, the best epoch's weights, early stopping, TensorBoard and the
    backup a preempted run resumes from."""
    callbacks = [
        keras.callbacks.CSVLogger(io.join(model_dir, model_dir_lib.HISTORY_FILE)),
        keras.callbacks.ModelCheckpoint(
            best, monitor=monitor, save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.TensorBoard(io.join(model_dir, "logs")),
        keras.callbacks.BackupAndRestore(backup_dir or io.join(model_dir, "backup")),
    ]
    if patience > 0:
        callbacks.insert(2, keras.callbacks.EarlyStopping(monitor=monitor, patience=patience))
    return callbacks
