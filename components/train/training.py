"""Transfer learning on the TFRecords of create_tfrecords: plain Keras ``fit``.

The model directory a run writes (the ``Model`` artifact) holds::

    model.keras            the trained classifier (best epoch by validation loss)
    labels.txt             class labels, index order
    training_config.json   backbone, image size, labels and the run's history
    logs/                  TensorBoard event files
    checkpoints/           best-epoch weights
    backup/                BackupAndRestore state (unless backup_dir points elsewhere)
"""

from __future__ import annotations

import json
import logging
import time

import keras

from components.common import io, labels as label_io
from components.train import backbones, data

MODEL_FILE = "model.keras"
CONFIG_FILE = "training_config.json"

log = logging.getLogger(__name__)


def _pretrained(weights: str) -> bool:
    return weights.strip().lower() not in ("", "none", "random")


def _faster_batchnorm_statistics(model: keras.Model, momentum: float) -> None:
    """Lowers BatchNormalization momentum of a randomly initialised backbone.

    keras.applications builds BN layers with momentum 0.99-0.999, tuned for long
    ImageNet runs; a short run from scratch leaves their moving statistics near their
    initial values, and the model then predicts badly in inference mode.
    """
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def train(
    dataset_dir: str,
    model_dir: str,
    backbone: str = "EfficientNetB0",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = 32,
    epochs: int = 10,
    learning_rate: float = 1e-3,
    dropout: float = 0.2,
    early_stopping_patience: int = 3,
    backup_dir: str = "",
    seed: int = 42,
) -> dict:
    """Trains a classifier on a create_tfrecords dataset and saves it to ``model_dir``.

    With pretrained weights (``"imagenet"`` or a weights file) the backbone is frozen
    and only the new head trains; from random initialisation the whole network trains.

    Args:
        dataset_dir: Directory (or gs:// URI) written by create_tfrecords.
        model_dir: Where to write the model directory described in this module's doc.
        backbone: A name from ``backbones.BACKBONES``, e.g. ``"EfficientNetB0"``.
        weights: ``"imagenet"``, ``"none"`` or a path to a no-top weights file.
        image_size: Side of the square input, in pixels.
        batch_size: Images per batch.
        epochs: Maximum number of epochs.
        learning_rate: Adam learning rate.
        dropout: Dropout rate before the classification layer.
        early_stopping_patience: Epochs without validation-loss improvement before
            stopping (the best epoch's weights are kept); 0 disables early stopping.
        backup_dir: Durable directory for BackupAndRestore, so a preempted run resumes
            at its last completed epoch; empty means ``<model_dir>/backup``.
        seed: Seed for weight initialisation and shuffling.

    Returns:
        Final metrics of the kept epoch: ``val_accuracy``, ``val_loss``, ``accuracy``,
        ``loss``, plus ``epochs_run``, ``best_epoch`` and ``train_seconds``.
    """
    keras.utils.set_random_seed(seed)
    labels = label_io.read_labels(io.join(dataset_dir, label_io.LABELS_FILE))
    train_ds = data.make_dataset(dataset_dir, "train", image_size, batch_size, True, seed=seed)
    valid_ds = data.make_dataset(dataset_dir, "valid", image_size, batch_size)

    model, base = backbones.build_classifier(backbone, len(labels), image_size, weights, dropout)
    if _pretrained(weights):
        base.trainable = False
    else:
        _faster_batchnorm_statistics(base, momentum=0.9)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )

    io.makedirs(model_dir)
    best_weights = io.join(model_dir, "checkpoints", "best.weights.h5")
    io.makedirs(io.join(model_dir, "checkpoints"))
    callbacks = [
        keras.callbacks.BackupAndRestore(backup_dir or io.join(model_dir, "backup")),
        keras.callbacks.ModelCheckpoint(
            best_weights, monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.TensorBoard(io.join(model_dir, "logs")),
    ]
    if early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=early_stopping_patience)
        )

    start = time.monotonic()
    history = model.fit(
        train_ds,
        validation_data=valid_ds,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # train_ds shuffles itself; Keras cannot shuffle a tf.data.Dataset
        verbose=2,
    )
    seconds = time.monotonic() - start
    model.load_weights(best_weights)

    hist = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    best = min(range(len(hist["val_loss"])), key=hist["val_loss"].__getitem__)
    metrics = {k: vs[best] for k, vs in hist.items()}
    metrics.update(epochs_run=len(hist["val_loss"]), best_epoch=best + 1, train_seconds=seconds)

    save_model_dir(
        model,
        model_dir,
        labels,
        {
            "backbone": backbone,
            "weights": weights,
            "image_size": image_size,
            "history": hist,
            "metrics": metrics,
        },
    )
    log.info("trained %s in %.0f s: %s", backbone, seconds, json.dumps(metrics))
    return metrics


def save_model_dir(model: keras.Model, model_dir: str, labels: list[str], config: dict) -> None:
    """Writes ``model.keras``, ``labels.txt`` and ``training_config.json`` to ``model_dir``.

    ``config`` must hold at least ``backbone`` and ``image_size``; the labels are added.
    """
    io.makedirs(model_dir)
    model.save(io.join(model_dir, MODEL_FILE))
    label_io.write_labels(io.join(model_dir, label_io.LABELS_FILE), labels)
    io.write_json(io.join(model_dir, CONFIG_FILE), {**config, "labels": labels})


def read_config(model_dir: str) -> dict:
    """The ``training_config.json`` of a model directory written by :func:`train`."""
    return io.read_json(io.join(model_dir, CONFIG_FILE))


def load_model(model_dir: str) -> keras.Model:
    """Loads the classifier a :func:`train` run saved."""
    return keras.models.load_model(io.join(model_dir, MODEL_FILE))
