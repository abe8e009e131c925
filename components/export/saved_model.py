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

Two more signatures split ``serving_default`` at its one non-differentiable step (JPEG
decoding), the convention Vertex Explainable AI uses for TensorFlow 2 models whose
serving input is not differentiable::

    xai_preprocess: image_bytes string [batch] -> pixels float32 [batch, size, size, 3]
    xai_model:      pixels float32 [batch, size, size, 3] (0-255) -> probabilities

``xai_model(xai_preprocess(b))`` is ``serving_default(b)["probabilities"]``; attribution
methods (integrated gradients, XRAI) differentiate ``xai_model`` with respect to the
pixels. ``assets.extra/explanation_metadata.json`` describes them for a Vertex AI upload
(see :mod:`components.export.explanation_metadata`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from components.common import io, labels as label_io, preprocessing
from components.export import explanation_metadata
from components.train import training

SIGNATURE = "serving_default"
INPUT_NAME = "image_bytes"
OUTPUT_NAMES = ("probabilities", "class_index", "label", "score")

XAI_PREPROCESS_SIGNATURE = explanation_metadata.XAI_PREPROCESS_SIGNATURE
XAI_MODEL_SIGNATURE = explanation_metadata.XAI_MODEL_SIGNATURE
PIXELS_NAME = "pixels"
PROBABILITIES_NAME = "probabilities"


def build_archive(
    model: keras.Model, labels: list[str], image_size: int
) -> keras.export.ExportArchive:
    """Wraps ``model`` in an ExportArchive whose serving function takes encoded images.

    Its endpoints are ``serving_default`` (the first, the one servers call) and the
    ``xai_preprocess`` / ``xai_model`` pair described in this module's doc.
    """
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

    def xai_preprocess(image_bytes):
        return {PIXELS_NAME: preprocessing.decode_batch(image_bytes, image_size)}

    def xai_model(pixels):
        return {PROBABILITIES_NAME: model(pixels, training=False)}

    bytes_spec = tf.TensorSpec([None], tf.string, name=INPUT_NAME)
    pixels_spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=PIXELS_NAME)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=[bytes_spec])
    archive.add_endpoint(
        name=XAI_PREPROCESS_SIGNATURE, fn=xai_preprocess, input_signature=[bytes_spec]
    )
    archive.add_endpoint(name=XAI_MODEL_SIGNATURE, fn=xai_model, input_signature=[pixels_spec])
    return archive


def export_saved_model(
    model_dir: str,
    export_dir: str,
    explanation_method: str = explanation_metadata.INTEGRATED_GRADIENTS,
    explanation_steps: int = explanation_metadata.DEFAULT_STEPS,
) -> dict:
    """Writes the serving SavedModel of a trained model directory.

    Args:
        model_dir: A model directory written by the train stage.
        export_dir: Where to write the SavedModel (``saved_model.pb`` at its root, as
            Vertex AI and TF Serving expect); local path or ``gs://``.
        explanation_method: The attribution method of the Vertex explanation spec written
            with the model: ``integrated_gradients`` or ``xrai``.
        explanation_steps: Its step count (1 to 100).

    Returns:
        Metadata describing the export: labels, image size, signatures, backbone, and
        ``explanation_metadata`` / ``explanation_parameters`` (the Vertex AI REST JSON
        of the files in ``assets.extra/``).
    """
    config = training.read_config(model_dir)
    labels = label_io.read_labels(io.join(model_dir, label_io.LABELS_FILE))
    model = training.load_model(model_dir)
    build_archive(model, labels, config["image_size"]).write_out(export_dir, verbose=False)
    label_io.write_labels(io.join(export_dir, "assets.extra", label_io.LABELS_FILE), labels)
    spec = explanation_metadata.write_explanation_spec(
        export_dir, labels, explanation_method, explanation_steps
    )
    return {
        "labels": labels,
        "image_size": config["image_size"],
        "backbone": config["backbone"],
        "signature": SIGNATURE,
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
        "explanation_signatures": [XAI_PREPROCESS_SIGNATURE, XAI_MODEL_SIGNATURE],
        **spec,
        "framework": "tensorflow",
        "framework_version": tf.__version__,
    }


def load_signature(export_dir: str, name: str = SIGNATURE):
    """Loads one signature of an exported SavedModel (``serving_default`` by default:
    ``image_bytes`` -> outputs)."""
    return tf.saved_model.load(export_dir).signatures[name]
