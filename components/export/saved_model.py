"""Exports a trained classifier as a SavedModel that serves encoded images.

The SavedModel carries its preprocessing (decode, resize) and its labels, so any
TensorFlow Serving compatible server (TF Serving, Vertex AI's prebuilt TensorFlow
container, KServe's TensorFlow predictor, the suite's local server) serves it as is.

Its signatures, input and output names and the place of its labels are the serving
contract, ``components.common.serving``: ``serving_default`` takes ``image_bytes`` and
returns ``probabilities``, ``class_index``, ``label`` and ``score``; labels are also written
to ``assets.extra/labels.txt``. ``xai_preprocess`` and ``xai_model`` split it at decoding,
the convention Vertex Explainable AI uses for TensorFlow 2 models whose serving input is
not differentiable: ``xai_model(xai_preprocess(b))`` is ``serving_default(b)["probabilities"]``; attribution
methods (integrated gradients, XRAI) differentiate ``xai_model`` with respect to the
pixels. ``assets.extra/explanation_metadata.json`` describes them for a Vertex AI upload
(see :mod:`components.export.explanation_metadata`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from components.classification.signature import (
    INPUT_NAME,
    OUTPUT_NAMES,
    PIXELS_NAME,
    PROBABILITIES_NAME,
    XAI_MODEL_SIGNATURE,
    XAI_PREPROCESS_SIGNATURE,
)
from components.common import model_dir as model_dir_lib, preprocessing, serving
from components.common.serving import SIGNATURE
from components.export import explanation_metadata


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
    config = model_dir_lib.read_config(model_dir)
    labels = model_dir_lib.read_labels(model_dir)
    model = model_dir_lib.load_model(model_dir)
    build_archive(model, labels, config["image_size"]).write_out(export_dir, verbose=False)
    serving.write_export_labels(export_dir, labels)
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
