"""Exports a trained classifier as a SavedModel that serves encoded images.

The SavedModel carries its preprocessing (decode, resize) and its labels, so any
TensorFlow Serving compatible server (TF Serving, Vertex AI's prebuilt TensorFlow
container, KServe's TensorFlow predictor, the suite's local server) serves it as is.

Signature ``serving_default``::

    inputs:  image_bytes  string [batch]   encoded JPEG/PNG/GIF/BMP; in JSON requests
                                           the TF Serving convention {"b64": "..."}
    outputs: probabilities float32 [batch, classes]
             class_index   int64   [batch]
             label         string  [batch]
             score         float32 [batch]   probability of the top class

The input name ends in ``_bytes`` because TensorFlow Serving's REST API base64-decodes
``{"b64": ...}`` values for such inputs. Labels are also written to
``assets.extra/labels.txt`` (next to, not inside, the graph) for clients.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from components.common import io, labels as label_io, preprocessing
from components.train import training

SIGNATURE = "serving_default"
INPUT_NAME = "image_bytes"
OUTPUT_NAMES = ("probabilities", "class_index", "label", "score")


def build_archive(
    model: keras.Model, labels: list[str], image_size: int
) -> keras.export.ExportArchive:
    """Wraps ``model`` in an ExportArchive whose serving function takes encoded images."""
    label_table = tf.constant(labels)

    def serve(image_bytes):
        images = preprocessing.decode_batch(image_bytes, image_size)
        probabilities = model(images, training=False)
        class_index = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "probabilities": probabilities,
            "class_index": class_index,
            "label": tf.gather(label_table, class_index),
            "score": tf.reduce_max(probabilities, axis=-1),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE,
        fn=serve,
        input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)],
    )
    return archive


def export_saved_model(model_dir: str, export_dir: str) -> dict:
    """Writes the serving SavedModel of a trained model directory.

    Args:
        model_dir: A model directory written by the train stage.
        export_dir: Where to write the SavedModel (``saved_model.pb`` at its root, as
            Vertex AI and TF Serving expect); local path or ``gs://``.

    Returns:
        Metadata describing the export: labels, image size, signature and backbone.
    """
    config = training.read_config(model_dir)
    labels = label_io.read_labels(io.join(model_dir, label_io.LABELS_FILE))
    model = training.load_model(model_dir)
    build_archive(model, labels, config["image_size"]).write_out(export_dir, verbose=False)
    label_io.write_labels(io.join(export_dir, "assets.extra", label_io.LABELS_FILE), labels)
    return {
        "labels": labels,
        "image_size": config["image_size"],
        "backbone": config["backbone"],
        "signature": SIGNATURE,
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
        "framework": "tensorflow",
        "framework_version": tf.__version__,
    }


def load_signature(export_dir: str):
    """Loads an exported SavedModel's serving function (``image_bytes`` -> outputs)."""
    return tf.saved_model.load(export_dir).signatures[SIGNATURE]
