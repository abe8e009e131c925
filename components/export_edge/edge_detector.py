"""The pixel-input SavedModel of a detector's export, which both edge converters start from.

It is the export's own ``edge_detect`` signature (one image resized to the model's
input -> the Object Detection API's outputs, suppressed with the op TFLite and TensorFlow.js
both run: ``components.detection.portable_suppression``) behind the same portable resize
as the classifier's edge model (:mod:`components.export_edge.resize`), and its labels.
Decoding stays outside, as for the classifier. One image per call: a device detects on one
frame at a time, and the suppression op takes one image. Its signatures::

    serving_default: pixels uint8 [1, height, width, 3] (RGB, any size)
                     -> detection_boxes float32 [1, max_detections, 4] (normalized
                        ymin, xmin, ymax, xmax), detection_classes [1, max_detections]
                        (from 1), detection_scores [1, max_detections],
                        num_detections [1], detection_multiclass_scores
                        [1, max_detections, classes], detection_labels string
                        [1, max_detections] ("" past num_detections)
    numeric:         the same without ``detection_labels`` (for TensorFlow.js)
"""

from __future__ import annotations

import tensorflow as tf

from components.common import serving
from components.detection import export as detection_export
from components.export_edge.edge_model import PIXELS, RESIZE_SCOPE, image_size
from components.export_edge.resize import resize_batch

_PIXELS_SPEC = tf.TensorSpec([1, None, None, 3], tf.uint8, name=PIXELS)


class EdgeDetector(tf.Module):
    """uint8 pixels of one image of any size -> the detections, on the export's detector
    (``export``: the export already loaded, else it is loaded from ``export_dir``)."""

    task = "detection"
    input_description = "pixels: uint8 [1, height, width, 3], RGB, any size (resized inside)"
    numeric_outputs = (
        "detection_boxes",
        "detection_classes",
        "detection_scores",
        "num_detections",
        "detection_multiclass_scores",
    )
    outputs = (*numeric_outputs, "detection_labels")
    float_scopes = (RESIZE_SCOPE, detection_export.EDGE_POSTPROCESS_SCOPE)

    def __init__(self, export_dir: str, export=None):
        super().__init__()
        self.export = export or tf.saved_model.load(export_dir)  # tracked: variables saved
        if detection_export.EDGE_SIGNATURE not in self.export.signatures:
            raise ValueError(
                f"the detector's SavedModel at {export_dir} has no "
                f"{detection_export.EDGE_SIGNATURE!r} signature (signatures: "
                f"{sorted(self.export.signatures)}): export it again with this suite's "
                "export_detector, which adds it"
            )
        self.detector = self.export.signatures[detection_export.EDGE_SIGNATURE]
        self.labels = serving.read_export_labels(export_dir)
        self.size = image_size(self.detector)
        self.label_table = tf.constant(["", *self.labels])  # class 0: padding

    def _outputs(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.name_scope(RESIZE_SCOPE):
            images = resize_batch(pixels, self.size)
        found = self.detector(**{detection_export.EDGE_INPUT_NAME: images})
        return {name: found[name] for name in self.numeric_outputs}

    @tf.function(input_signature=[_PIXELS_SPEC])
    def serve(self, pixels):
        outputs = self._outputs(pixels)
        classes = tf.cast(outputs["detection_classes"], tf.int32)
        return {**outputs, "detection_labels": tf.gather(self.label_table, classes)}

    @tf.function(input_signature=[_PIXELS_SPEC])
    def numeric(self, pixels):
        return self._outputs(pixels)
