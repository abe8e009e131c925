"""The model directory the train stage writes and the export stage reads::

model.keras            the trained classifier (float32), Keras format
labels.txt             its labels, one per line, in class-index order
training_config.json   backbone, image_size, labels, the training settings, metrics, history
history.csv            one row per epoch (train also writes curves.html, logs/, checkpoints/)
"""

from __future__ import annotations

from components.common import io, labels as label_io

MODEL_FILE = "model.keras"
CONFIG_FILE = "training_config.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.html"


def save_model_dir(model, model_dir: str, labels: list[str], config: dict) -> None:
    """Writes ``model.keras``, ``labels.txt`` and ``training_config.json`` to ``model_dir``.

    ``config`` must hold at least ``backbone`` and ``image_size``; the labels are added.
    """
    io.makedirs(model_dir)
    model.save(io.join(model_dir, MODEL_FILE))
    label_io.write_labels(io.join(model_dir, label_io.LABELS_FILE), labels)
    io.write_json(io.join(model_dir, CONFIG_FILE), {**config, "labels": labels})


def read_config(model_dir: str) -> dict:
    """The ``training_config.json`` of a model directory."""
    return io.read_json(io.join(model_dir, CONFIG_FILE))


def read_labels(model_dir: str) -> list[str]:
    return label_io.read_labels(io.join(model_dir, label_io.LABELS_FILE))


def load_model(model_dir: str):
    """Loads the classifier of a model directory (a ``keras.Model``)."""
    import keras

    return keras.models.load_model(io.join(model_dir, MODEL_FILE))
