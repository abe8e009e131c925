"""Training the detector on create_tfrecords' detection records.

The input pipeline reads the Object Detection API's records (``schema``), decodes each
JPEG, stretches it to the model's square input (normalized boxes are unchanged by it),
applies the box-aware augmentation (a horizontal flip that mirrors the boxes, and colour
jitter that leaves them alone) and encodes the CenterNet targets (``centernet``).

``train`` fits the model with Keras' own callbacks: the best epoch's weights by
validation loss (kept, and restored at the end), early stopping, TensorBoard, and a
BackupAndRestore folder (``backup_dir``) from which a preempted run resumes. It writes a
model directory as the classification stage does (``common.model_dir``): ``model.keras``,
``labels.txt``, ``training_config.json``, ``history.csv``.
"""

from __future__ import annotations

import logging
import math

import keras
import tensorflow as tf

from components.common import (
    io,
    labels as labels_lib,
    model_dir as model_dir_lib,
    preprocessing,
    schema as common_schema,
)
from components.detection import centernet, schema
from components.train.backbones import build_backbone, is_pretrained

log = logging.getLogger(__name__)


def _image_and_boxes(
    serialized: tf.Tensor, image_size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    example = schema.parse_example(serialized)
    image = tf.io.decode_jpeg(example[schema.ENCODED], channels=3)
    image = preprocessing.resize(image, image_size)
    boxes = tf.stack(
        [example[k] for k in (schema.YMIN, schema.XMIN, schema.YMAX, schema.XMAX)], axis=1
    )
    classes = tf.cast(example[schema.CLASS_LABEL], tf.int32) - 1
    return image, tf.reshape(boxes, [-1, 4]), classes


def augment(image: tf.Tensor, boxes: tf.Tensor, flip: bool = True, colour: bool = True):
    """A random horizontal flip (boxes mirrored with the pixels) and brightness and
    contrast jitter (boxes unchanged)."""
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
) -> tf.data.Dataset:
    """Batches of ``(images, targets)`` of one split; endless and shuffled when
    ``training``."""
    files = common_schema.shard_files(dataset_dir, split)
    dataset = common_schema.read_records(files)
    if training:
        dataset = dataset.shuffle(2048).repeat()

    def to_example(serialized):
        image, boxes, classes = _image_and_boxes(serialized, image_size)
        if training:
            image, boxes = augment(image, boxes, flip, colour)
        return image, centernet.encode_targets(boxes, classes, num_classes, image_size)

    dataset = dataset.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


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
    backup_dir: str = "",
) -> dict:
    """Trains the CenterNet-style detector and writes its model directory.

    Args:
        dataset_dir: The dataset of ``create_tfrecords`` for detection.
        model_dir: Where to write the model directory.
        backbone: A keras.applications backbone (``components.train.backbones``).
        weights: ``imagenet``, a weights file of the backbone, or empty for random
            initialisation (BatchNormalization's momentum is then lowered to 0.9).
        image_size: The model's square input side (a multiple of 32).
        batch_size: Images per step.
        epochs: Most epochs (one is a pass over the train split).
        learning_rate: Adam's peak rate, then a cosine decay over the epochs.
        early_stopping_patience: Epochs without a better validation loss before
            stopping; 0 never stops early.
        augment_flip: Random horizontal flips, boxes mirrored.
        augment_colour: Random brightness and contrast.
        backup_dir: A durable folder to back each epoch up to and resume from after a
            preemption; empty: a folder in ``model_dir``.

    Returns:
        The training config written to ``training_config.json`` (with the epochs run and
        the best validation loss).
    """
    if image_size % 32 or image_size < 64:
        raise ValueError(f"image_size must be a multiple of 32, at least 64, got {image_size}")
    if batch_size < 1 or epochs < 1:
        raise ValueError("batch_size and epochs must be >= 1")
    labels = labels_lib.read_labels(io.join(dataset_dir, labels_lib.LABELS_FILE))
    stats = io.read_json(io.join(dataset_dir, common_schema.STATS_FILE))
    train_images = int(stats["splits"]["train"])
    if train_images < batch_size:
        raise ValueError(
            f"the train split has {train_images} images, fewer than batch_size={batch_size}"
        )
    steps = math.ceil(train_images / batch_size)
    keras.utils.set_random_seed(0)
    model = centernet.build_detector(build_backbone(backbone, image_size, weights), len(labels))
    if not is_pretrained(weights):
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=steps * epochs, alpha=0.05
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=centernet.LOSSES,
        loss_weights=centernet.LOSS_WEIGHTS,
    )
    # Without validation images the training loss picks the best epoch.
    validate = int(stats["splits"]["valid"]) > 0
    monitor = "val_loss" if validate else "loss"
    io.makedirs(model_dir)
    best = io.join(model_dir, "checkpoints", "best.weights.h5")
    io.makedirs(io.join(model_dir, "checkpoints"))
    callbacks = [
        keras.callbacks.CSVLogger(io.join(model_dir, model_dir_lib.HISTORY_FILE)),
        keras.callbacks.ModelCheckpoint(
            best, monitor=monitor, save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.TensorBoard(io.join(model_dir, "logs")),
        keras.callbacks.BackupAndRestore(backup_dir or io.join(model_dir, "backup")),
    ]
    if early_stopping_patience > 0:
        callbacks.insert(
            2, keras.callbacks.EarlyStopping(monitor=monitor, patience=early_stopping_patience)
        )
    num_classes = len(labels)
    history = model.fit(
        make_dataset(
            dataset_dir,
            "train",
            num_classes,
            image_size,
            batch_size,
            True,
            augment_flip,
            augment_colour,
        ),
        validation_data=(
            make_dataset(dataset_dir, "valid", num_classes, image_size, batch_size, False)
            if validate
            else None
        ),
        validation_steps=math.ceil(int(stats["splits"]["valid"]) / batch_size)
        if validate
        else None,
        steps_per_epoch=steps,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # the training stream shuffles itself
        verbose=2,
    )
    model.load_weights(best)
    val_losses = history.history.get(monitor, [])
    config = {
        "task": "detection",
        "backbone": backbone,
        "weights": weights,
        "image_size": image_size,
        "batch_size": batch_size,
        "epochs_run": len(val_losses),
        "monitor": monitor,
        "best_val_loss": min(val_losses) if val_losses else None,
        "learning_rate": learning_rate,
    }
    model_dir_lib.save_model_dir(model, model_dir, labels, config)
    log.info(
        "detection train: %d epochs, best val_loss %s", len(val_losses), config["best_val_loss"]
    )
    return {**config, "labels": labels}
