"""Exports a trained detector as a SavedModel with the TF Object Detection API's contract.

Decoding, resizing, the detector and its decoding (``centernet.decode``: peak extraction,
or a KerasHub RetinaNet's anchors; then the shared top candidates and class-aware
non-maximum suppression of ``suppression``) are all in the graph, so TF Serving,
Vertex AI's TensorFlow container, KServe's TensorFlow predictor and the suite's server
serve it as is. Its signatures are the ones the Object Detection API's TF2 exporter
writes (``exporter_main_v2.py``), so a 2019 client keeps working:

* ``serving_default``: ``inputs``, a string ``[batch]`` of encoded images (JPEG, PNG, GIF,
  BMP): ``input_type=encoded_image_string_tensor``. In TF Serving's REST API the row
  request ``{"signature_name": "serving_default", "instances": [{"inputs": {"b64":
  "..."}}]}`` and the columnar ``{"inputs": [{"b64": "..."}]}``.
* ``image_tensor``: ``input_tensor``, uint8 ``[batch, height, width, 3]``.
* ``tf_example``: ``input_tensor``, a string ``[batch]`` of serialized ``tf.train.Example``
  records with ``image/encoded`` (the records create_tfrecords writes).
* ``edge_detect`` (not the Object Detection API's): ``images``, float32 ``[1, size, size,
  3]``, one image already resized to the model's input (0-255): what the export_edge
  stage's TFLite and TensorFlow.js models run after their own resize. It suppresses with
  ``portable_suppression`` (the op both runtimes have) and has no ``detection_labels``.

Every signature returns, float32 like the Object Detection API's: ``detection_boxes``
``[batch, max_detections, 4]`` normalized ``[ymin, xmin, ymax, xmax]`` of the input image,
inside ``[0, 1]``; ``detection_classes`` (from 1, as ``label_map.pbtxt``);
``detection_scores``; ``num_detections`` ``[batch]``; ``detection_multiclass_scores``
``[batch, max_detections, classes]``; and, beyond the Object Detection API,
``detection_labels`` (string), so a client needs no label map. Detections past
``num_detections`` are zeros (an empty label). The image is stretched to the model's
square input, so normalized boxes hold for the image as sent.
``assets.extra/`` holds ``labels.txt`` and ``label_map.pbtxt``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from components.common import io, model_dir as model_dir_lib, preprocessing, serving
from components.detection import (
    centernet,
    keras_hub_detectors,
    portable_suppression,
    schema,
    suppression,
)

SIGNATURE = "serving_default"
INPUT_NAME = "inputs"
IMAGE_TENSOR_SIGNATURE = "image_tensor"
TF_EXAMPLE_SIGNATURE = "tf_example"
TENSOR_INPUT_NAME = "input_tensor"
EDGE_SIGNATURE = "edge_detect"
EDGE_INPUT_NAME = "images"
# The nodes of edge_detect after the model: export_edge keeps them out of int8.
EDGE_POSTPROCESS_SCOPE = "edge_postprocess"
OUTPUT_NAMES = (
    "detection_boxes",
    "detection_classes",
    "detection_scores",
    "num_detections",
    "detection_multiclass_scores",
    "detection_labels",
)


def build_archive(
    model: keras.Model,
    labels: list[str],
    image_size: int,
    max_detections: int = 100,
    score_threshold: float = 0.0,
    iou_threshold: float = 0.6,
    family: str = "centernet",
    input_scale: Sequence[float] = (),
    input_offset: Sequence[float] = (),
) -> keras.export.ExportArchive:
    """Wraps ``model`` in an ExportArchive with the four signatures of the module doc.
    ``family`` says how its outputs become candidates (``centernet.decode``, or a
    KerasHub detector's anchors scaled by ``input_scale`` and ``input_offset``)."""
    label_table = tf.constant(["", *labels])  # index 0: padding past num_detections
    candidates = max(100, max_detections)
    settings = {
        "max_detections": max_detections,
        "score_threshold": score_threshold,
        "iou_threshold": iou_threshold,
    }

    def propose(images: tf.Tensor) -> dict[str, tf.Tensor]:
        """The best candidates of resized images, as ``suppression.suppress`` takes them;
        the decoding after the model under ``EDGE_POSTPROCESS_SCOPE``."""
        if family == "centernet":
            outputs = model(images, training=False)
            with tf.name_scope(EDGE_POSTPROCESS_SCOPE):
                return centernet.peak_candidates(outputs, candidates)
        boxes, probabilities = keras_hub_detectors.candidates(
            model, keras_hub_detectors.scale_images(images, input_scale, input_offset)
        )
        with tf.name_scope(EDGE_POSTPROCESS_SCOPE):
            return suppression.top_candidates(boxes, probabilities, candidates)

    def numeric(found: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        real = tf.sequence_mask(found["num_detections"], max_detections)
        classes = tf.where(real, found["classes"] + 1, 0)
        return {
            "detection_boxes": found["boxes"],
            "detection_classes": tf.cast(classes, tf.float32),
            "detection_scores": found["scores"],
            "num_detections": tf.cast(found["num_detections"], tf.float32),
            "detection_multiclass_scores": found["multiclass_scores"],
        }

    def detect(images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = numeric(suppression.suppress(**propose(images), **settings))
        classes = tf.cast(outputs["detection_classes"], tf.int32)
        return {**outputs, "detection_labels": tf.gather(label_table, classes)}

    def edge_detect(images):
        found = propose(images)
        with tf.name_scope(EDGE_POSTPROCESS_SCOPE):
            return numeric(portable_suppression.suppress_one(**found, **settings))

    def from_encoded(inputs):
        return detect(preprocessing.decode_batch(inputs, image_size))

    def from_tensor(input_tensor):
        resized = tf.map_fn(
            lambda image: preprocessing.resize(image, image_size),
            input_tensor,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        )
        return detect(resized)

    def from_examples(input_tensor):
        encoded = tf.io.parse_example(
            input_tensor, {schema.ENCODED: tf.io.FixedLenFeature([], tf.string)}
        )[schema.ENCODED]
        return from_encoded(encoded)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE,
        fn=from_encoded,
        input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)],
    )
    archive.add_endpoint(
        name=IMAGE_TENSOR_SIGNATURE,
        fn=from_tensor,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=TENSOR_INPUT_NAME)],
    )
    archive.add_endpoint(
        name=TF_EXAMPLE_SIGNATURE,
        fn=from_examples,
        input_signature=[tf.TensorSpec([None], tf.string, name=TENSOR_INPUT_NAME)],
    )
    archive.add_endpoint(
        name=EDGE_SIGNATURE,
        fn=edge_detect,
        input_signature=[
            tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name=EDGE_INPUT_NAME)
        ],
    )
    return archive


def export_detector(
    model_dir: str,
    export_dir: str,
    max_detections: int = 100,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.6,
) -> dict:
    """Writes the serving SavedModel of a trained detector's model directory.

    Args:
        model_dir: A model directory written by ``training.train``.
        export_dir: Where to write the SavedModel (local path or ``gs://``).
        max_detections: Detections per image in the outputs (the Object Detection API's
            ``max_total_detections``).
        score_threshold: Detections scoring less are dropped.
        iou_threshold: Two boxes of a class overlapping more are one detection.

    Returns:
        Metadata of the export: labels, image size, signatures, inputs and outputs.
    """
    if max_detections < 1 or not 0 <= score_threshold < 1 or not 0 < iou_threshold <= 1:
        raise ValueError(
            "max_detections must be >= 1, score_threshold in [0, 1), iou_threshold in (0, 1]"
        )
    config = model_dir_lib.read_config(model_dir)
    labels = model_dir_lib.read_labels(model_dir)
    family = config.get("family", "centernet")
    if family in keras_hub_detectors.KERAS_HUB_FAMILIES:
        import keras_hub  # noqa: F401  (registers KerasHub's classes for loading)
    model = keras.models.load_model(io.join(model_dir, model_dir_lib.MODEL_FILE), compile=False)
    archive = build_archive(
        model,
        labels,
        config["image_size"],
        max_detections,
        score_threshold,
        iou_threshold,
        family,
        config.get("input_scale", ()),
        config.get("input_offset", ()),
    )
    archive.write_out(export_dir, verbose=False)
    serving.write_export_labels(export_dir, labels)
    io.write_text(
        serving.extra_path(export_dir, schema.LABEL_MAP_FILE), schema.label_map_text(labels)
    )
    return {
        "task": "detection",
        "labels": labels,
        "image_size": config["image_size"],
        "backbone": config["backbone"],
        "family": family,
        "signature": SIGNATURE,
        "input": INPUT_NAME,
        "signatures": [SIGNATURE, IMAGE_TENSOR_SIGNATURE, TF_EXAMPLE_SIGNATURE, EDGE_SIGNATURE],
        "outputs": list(OUTPUT_NAMES),
        "max_detections": max_detections,
        "score_threshold": score_threshold,
        "iou_threshold": iou_threshold,
        "framework": "tensorflow",
        "framework_version": tf.__version__,
    }
